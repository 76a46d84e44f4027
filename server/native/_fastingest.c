/*
 * The fast path of the Ingest RPC: IngestRequest wire bytes -> stored FlowRecord rows.
 *
 * Python's path (server/api/services.py _raw_columns, then server.core.ingest.accept_columns)
 * spends ~3.5 us per record on protobuf field access, address canonicalisation, checks and
 * record ids. This module does the same for the common batch, one that is canonically encoded
 * and in which every record passes every check, in ~0.5 us, most of it without the GIL.
 *
 * It never decides anything on its own: for any batch it is not sure about (a record that
 * fails a check, an address inet_pton refuses, a string that is not plain ASCII, a repeated
 * Timestamp, a group, an oversized varint, ...) it returns None, and the caller takes the
 * Python path, which parses the message with protobuf and applies server.core's rules, errors
 * and rejections included. So the rules stay defined in one place (server.core.records and
 * server.core.ingest); tests/unit/test_fastingest.py checks that this module returns exactly
 * what that path returns whenever it returns anything.
 *
 * Record ids are BLAKE2b-128 (RFC 7693) over the same text as server.core.records.record_id.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- BLAKE2b, unkeyed, 16-byte digest (RFC 7693) ------------------------------------------ */

static const uint64_t B2_IV[8] = {
    0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL, 0xa54ff53a5f1d36f1ULL,
    0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL, 0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL,
};

static const uint8_t B2_SIGMA[12][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
};

static inline uint64_t rotr64(uint64_t x, unsigned n) { return (x >> n) | (x << (64 - n)); }

static inline uint64_t load64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

#define B2_G(a, b, c, d, x, y)                 \
    do {                                       \
        v[a] = v[a] + v[b] + (x);              \
        v[d] = rotr64(v[d] ^ v[a], 32);        \
        v[c] = v[c] + v[d];                    \
        v[b] = rotr64(v[b] ^ v[c], 24);        \
        v[a] = v[a] + v[b] + (y);              \
        v[d] = rotr64(v[d] ^ v[a], 16);        \
        v[c] = v[c] + v[d];                    \
        v[b] = rotr64(v[b] ^ v[c], 63);        \
    } while (0)

static void b2_compress(uint64_t h[8], const uint8_t block[128], uint64_t t, int last) {
    uint64_t m[16], v[16];
    for (int i = 0; i < 16; i++) m[i] = load64(block + 8 * i);
    for (int i = 0; i < 8; i++) {
        v[i] = h[i];
        v[i + 8] = B2_IV[i];
    }
    v[12] ^= t; /* the counter's high word stays 0: inputs here are far below 2**64 bytes */
    if (last) v[14] = ~v[14];
    for (int r = 0; r < 12; r++) {
        const uint8_t *s = B2_SIGMA[r];
        B2_G(0, 4, 8, 12, m[s[0]], m[s[1]]);
        B2_G(1, 5, 9, 13, m[s[2]], m[s[3]]);
        B2_G(2, 6, 10, 14, m[s[4]], m[s[5]]);
        B2_G(3, 7, 11, 15, m[s[6]], m[s[7]]);
        B2_G(0, 5, 10, 15, m[s[8]], m[s[9]]);
        B2_G(1, 6, 11, 12, m[s[10]], m[s[11]]);
        B2_G(2, 7, 8, 13, m[s[12]], m[s[13]]);
        B2_G(3, 4, 9, 14, m[s[14]], m[s[15]]);
    }
    for (int i = 0; i < 8; i++) h[i] ^= v[i] ^ v[i + 8];
}

/* hex of the 16-byte BLAKE2b digest of data[0:len] into out[0:32] */
static void blake2b128_hex(const uint8_t *data, size_t len, char out[32]) {
    static const char HEX[] = "0123456789abcdef";
    uint64_t h[8];
    uint8_t block[128];
    memcpy(h, B2_IV, sizeof h);
    h[0] ^= 0x01010000ULL ^ 16; /* depth 1, fanout 1, no key, 16-byte digest */
    uint64_t t = 0;
    while (len > 128) {
        t += 128;
        b2_compress(h, data, t, 0);
        data += 128;
        len -= 128;
    }
    memset(block, 0, sizeof block);
    memcpy(block, data, len);
    t += len;
    b2_compress(h, block, t, 1);
    for (int i = 0; i < 16; i++) {
        uint8_t byte = (uint8_t)(h[i / 8] >> (8 * (i % 8)));
        out[2 * i] = HEX[byte >> 4];
        out[2 * i + 1] = HEX[byte & 15];
    }
}

/* ---- protobuf wire format ----------------------------------------------------------------- */

typedef struct {
    const uint8_t *p;
    const uint8_t *end;
} reader;

/* A varint of at most 10 bytes whose value fits in 64 bits; 0 when malformed or truncated. */
static int rd_varint(reader *r, uint64_t *out) {
    if (r->p < r->end && !(*r->p & 0x80)) { /* most tags, lengths and small values */
        *out = *r->p++;
        return 1;
    }
    uint64_t v = 0;
    for (int shift = 0; shift < 70; shift += 7) {
        if (r->p >= r->end) return 0;
        uint8_t b = *r->p++;
        if (shift == 63 && (b & 0x7e)) return 0;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return 1;
        }
    }
    return 0;
}

static int rd_len(reader *r, const uint8_t **start, size_t *n) {
    uint64_t len;
    if (!rd_varint(r, &len)) return 0;
    if (len > (uint64_t)(r->end - r->p)) return 0;
    *start = r->p;
    *n = (size_t)len;
    r->p += len;
    return 1;
}

/* Skip a field of an unknown number: 0 for groups (wire types 3, 4) and bad wire types. */
static int rd_skip(reader *r, unsigned wt) {
    uint64_t ignored;
    const uint8_t *s;
    size_t n;
    switch (wt) {
    case 0: return rd_varint(r, &ignored);
    case 1:
        if (r->end - r->p < 8) return 0;
        r->p += 8;
        return 1;
    case 2: return rd_len(r, &s, &n);
    case 5:
        if (r->end - r->p < 4) return 0;
        r->p += 4;
        return 1;
    default: return 0;
    }
}

/* A field's number and wire type; 0 when malformed (field 0, or a tag over 32 bits). */
static int rd_tag(reader *r, unsigned *field, unsigned *wt) {
    uint64_t tag;
    if (!rd_varint(r, &tag) || tag > 0xFFFFFFFFULL || (tag >> 3) == 0) return 0;
    *field = (unsigned)(tag >> 3);
    *wt = (unsigned)(tag & 7);
    return 1;
}

/* Plain ASCII (a subset of the UTF-8 protobuf requires of strings); anything else: the slow path. */
static int ascii(const uint8_t *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (s[i] & 0x80) return 0;
    return 1;
}

/* ---- one record --------------------------------------------------------------------------- */

#define ADDR_MAX 46 /* INET6_ADDRSTRLEN */

typedef struct {
    const uint8_t *rid, *acc, *flid, *src, *dst, *rule;
    size_t rid_n, acc_n, flid_n, src_n, dst_n, rule_n;
    uint64_t sport, dport, proto, pkts, bytes, action, status, direction, flags, rule_kind, sampling;
    int64_t start, end;
    char src_txt[ADDR_MAX], dst_txt[ADDR_MAX];
    uint8_t src_len, dst_len;
    unsigned char src_bin[16], dst_bin[16];
    char id[32];
} rec;

/* FlowRecord's field numbers (protos/flowlog/v1/record.proto) and IngestRequest's (case labels
 * need constants). The module exports them as FIELDS and INGEST_FIELDS; server/native/fastpath.py
 * checks them at import against the proto descriptors, so a field renumbered in the protos cannot
 * silently diverge from this file. The record limits are not here: see configure(). */
#define F_RECORD_ID 1
#define F_VERSION 2
#define F_ACCOUNT_ID 3
#define F_FLOW_LOG_ID 4
#define F_REGION 5
#define F_RESOURCE_TYPE 6
#define F_RESOURCE_ID 7
#define F_NETWORK_ID 8
#define F_SRC_ADDR 9
#define F_DST_ADDR 10
#define F_SRC_PORT 11
#define F_DST_PORT 12
#define F_PROTOCOL 13
#define F_PACKETS 14
#define F_BYTES 15
#define F_START_TIME 16
#define F_END_TIME 17
#define F_ACTION 18
#define F_LOG_STATUS 19
#define F_DIRECTION 20
#define F_TCP_FLAGS 21
#define F_PROJECT 22
#define F_LOG_STORE 23
#define F_RULE_ID 24
#define F_RULE_KIND 25
#define F_SAMPLING_RATE 26
#define IR_FLOW_LOG_ID 1
#define IR_RECORDS 2

/* Timestamp -> epoch milliseconds (seconds * 1000 + nanos // 1_000_000), 0 when not sure. */
static int rd_timestamp(const uint8_t *s, size_t n, int64_t *ms) {
    reader r = {s, s + n};
    uint64_t seconds = 0, nanos = 0;
    while (r.p < r.end) {
        unsigned field, wt;
        if (!rd_tag(&r, &field, &wt)) return 0;
        if (field == 1 || field == 2) {
            if (wt != 0) return 0;
            if (!rd_varint(&r, field == 1 ? &seconds : &nanos)) return 0;
        } else if (!rd_skip(&r, wt)) {
            return 0;
        }
    }
    int64_t sec = (int64_t)seconds;
    /* Negative or oversized nanos (int32 on the wire) and absurd seconds: the slow path. */
    if (nanos > 0x7FFFFFFFULL || sec > 1000000000000000LL || sec < -1000000000000000LL) return 0;
    *ms = sec * 1000 + (int64_t)(nanos / 1000000);
    return 1;
}

/* Parse one FlowRecord. Later occurrences of a scalar or string field win, as in protobuf;
 * a repeated Timestamp (which protobuf merges) sends the batch to the slow path. */
static int rd_record(const uint8_t *s, size_t n, rec *o) {
    reader r = {s, s + n};
    int seen_start = 0, seen_end = 0;
    memset(o, 0, offsetof(rec, src_txt));
    o->rid = o->acc = o->flid = o->src = o->dst = o->rule = s; /* zero-length views */
    while (r.p < r.end) {
        unsigned field, wt;
        if (!rd_tag(&r, &field, &wt)) return 0;
        const uint8_t *str;
        size_t len;
        uint64_t *num = NULL;
        switch (field) {
        case F_RECORD_ID: case F_ACCOUNT_ID: case F_FLOW_LOG_ID: case F_REGION: case F_RESOURCE_ID:
        case F_NETWORK_ID: case F_SRC_ADDR: case F_DST_ADDR: case F_PROJECT: case F_LOG_STORE: case F_RULE_ID:
            if (wt != 2 || !rd_len(&r, &str, &len) || !ascii(str, len)) return 0;
            switch (field) {
            case F_RECORD_ID: o->rid = str; o->rid_n = len; break;
            case F_ACCOUNT_ID: o->acc = str; o->acc_n = len; break;
            case F_FLOW_LOG_ID: o->flid = str; o->flid_n = len; break;
            case F_SRC_ADDR: o->src = str; o->src_n = len; break;
            case F_DST_ADDR: o->dst = str; o->dst_n = len; break;
            case F_RULE_ID: o->rule = str; o->rule_n = len; break;
            default: break; /* region, resource, network, project, LogStore: the server's own */
            }
            continue;
        case F_START_TIME: case F_END_TIME:
            if (wt != 2 || !rd_len(&r, &str, &len)) return 0;
            if (field == F_START_TIME) {
                if (seen_start++ || !rd_timestamp(str, len, &o->start)) return 0;
            } else {
                if (seen_end++ || !rd_timestamp(str, len, &o->end)) return 0;
            }
            continue;
        case F_VERSION: case F_RESOURCE_TYPE: { /* version, resource_type: the server's own */
            uint64_t ignored;
            if (wt != 0 || !rd_varint(&r, &ignored)) return 0;
            continue;
        }
        case F_SRC_PORT: num = &o->sport; break;
        case F_DST_PORT: num = &o->dport; break;
        case F_PROTOCOL: num = &o->proto; break;
        case F_PACKETS: num = &o->pkts; break;
        case F_BYTES: num = &o->bytes; break;
        case F_ACTION: num = &o->action; break;
        case F_LOG_STATUS: num = &o->status; break;
        case F_DIRECTION: num = &o->direction; break;
        case F_TCP_FLAGS: num = &o->flags; break;
        case F_RULE_KIND: num = &o->rule_kind; break;
        case F_SAMPLING_RATE: num = &o->sampling; break;
        default:
            if (!rd_skip(&r, wt)) return 0;
            continue;
        }
        if (wt != 0 || !rd_varint(&r, num)) return 0;
    }
    return 1;
}

/* inet_ntop's text of an IPv4 address (glibc's goes through sprintf: ~10x slower). */
static size_t ntop4(const unsigned char b[4], char *out) {
    char *p = out;
    for (int i = 0; i < 4; i++) {
        unsigned v = b[i];
        if (v >= 100) *p++ = (char)('0' + v / 100);
        if (v >= 10) *p++ = (char)('0' + v / 10 % 10);
        *p++ = (char)('0' + v % 10);
        if (i < 3) *p++ = '.';
    }
    return (size_t)(p - out);
}

/* inet_ntop's text of an IPv6 address (RFC 5952: lowercase, no leading zeros, the first
 * longest run of two or more zero groups as "::"); 0 for the addresses inet_ntop writes with a
 * dotted IPv4 tail (::a.b.c.d, ::ffff:a.b.c.d), which ipaddress writes in hex: the slow path. */
static size_t ntop6(const unsigned char b[16], char *out) {
    static const char HEX[] = "0123456789abcdef";
    unsigned w[8];
    int best = -1, best_len = 0;
    for (int i = 0; i < 8; i++) w[i] = (unsigned)b[2 * i] << 8 | b[2 * i + 1];
    for (int i = 0; i < 8;) {
        if (w[i]) {
            i++;
            continue;
        }
        int j = i;
        while (j < 8 && !w[j]) j++;
        if (j - i > best_len) {
            best = i;
            best_len = j - i;
        }
        i = j;
    }
    if (best_len < 2) best = -1;
    if (best == 0 && (best_len == 6 || (best_len == 7 && w[7] != 1) || (best_len == 5 && w[5] == 0xffff)))
        return 0;
    char *p = out;
    for (int i = 0; i < 8; i++) {
        if (i == best) {
            *p++ = ':';
            if (i + best_len == 8) *p++ = ':';
            i += best_len - 1;
            continue;
        }
        if (i) *p++ = ':';
        unsigned v = w[i];
        int started = 0;
        for (int shift = 12; shift >= 0; shift -= 4) {
            unsigned d = (v >> shift) & 15;
            if (d || started || shift == 0) {
                *p++ = HEX[d];
                started = 1;
            }
        }
    }
    return (size_t)(p - out);
}

/* server.core.records.canonical_address for what inet_pton takes: 0 when not sure. The address's
 * bytes (network order; 4 for IPv4) go to bin. */
static int canonical(const uint8_t *s, size_t n, char out[ADDR_MAX], uint8_t *out_len, unsigned char bin[16]) {
    char text[ADDR_MAX];
    size_t len;
    if (n == 0 || n > 45 || memchr(s, 0, n)) return 0;
    memcpy(text, s, n);
    text[n] = 0;
    if (!memchr(text, ':', n)) {
        if (inet_pton(AF_INET, text, bin) != 1) return 0;
        len = ntop4(bin, out);
    } else {
        if (inet_pton(AF_INET6, text, bin) != 1) return 0;
        len = ntop6(bin, out);
        if (!len) return 0;
    }
    *out_len = (uint8_t)len;
    return 1;
}

static char *put_u64(char *p, uint64_t v) {
    static const char PAIRS[] =
        "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
        "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
        "8081828384858687888990919293949596979899";
    char tmp[20];
    int n = 20;
    while (v >= 100) {
        unsigned k = (unsigned)(v % 100) * 2;
        v /= 100;
        tmp[--n] = PAIRS[k + 1];
        tmp[--n] = PAIRS[k];
    }
    if (v >= 10) {
        tmp[--n] = PAIRS[v * 2 + 1];
        tmp[--n] = PAIRS[v * 2];
    } else {
        tmp[--n] = (char)('0' + v);
    }
    memcpy(p, tmp + n, (size_t)(20 - n));
    return p + (20 - n);
}

/* The record limits: none are written here. server/native/fastpath.py calls configure() with
 * server.core.records.record_limits() at import, and accept() refuses to run before it did, so a
 * limit changed in server.core is the limit this file applies. */
typedef struct {
    int64_t max_future_ms, max_past_ms, max_window_ms;
    uint64_t max_port, max_protocol, max_tcp_flags, rule_id_max, sampling_rate_max, rule_kind_max;
    uint8_t rule_id_char[256]; /* 1: a character a rule id may hold */
    int configured;
} limits_t;

static limits_t L;

static int rule_id_ok(const uint8_t *s, size_t n) {
    if (n > L.rule_id_max) return 0;
    for (size_t i = 0; i < n; i++)
        if (!L.rule_id_char[s[i]]) return 0;
    return 1;
}

/* A resource's addresses as server.core.attribution.AddressMatcher.packed() gives them: sorted,
 * disjoint, inclusive ranges; IPv4 as (start, end) uint64 pairs, IPv6 as (start high, start low,
 * end high, end low) uint64 quadruples, in native byte order. */
typedef struct {
    const uint64_t *v4, *v6;
    size_t n4, n6; /* ranges */
} addrset;

static int in_ranges(const uint64_t *r, size_t n, size_t width, uint64_t hi, uint64_t lo) {
    /* the last range whose start <= address, then address <= its end */
    size_t a = 0, b = n;
    while (a < b) {
        size_t m = (a + b) / 2;
        const uint64_t *s = r + m * width;
        int le = width == 2 ? s[0] <= lo : (s[0] < hi || (s[0] == hi && s[1] <= lo));
        if (le)
            a = m + 1;
        else
            b = m;
    }
    if (a == 0) return 0;
    const uint64_t *e = r + (a - 1) * width + width / 2;
    return width == 2 ? lo <= e[0] : (hi < e[0] || (hi == e[0] && lo <= e[1]));
}

static uint64_t be64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = (v << 8) | p[i];
    return v;
}

static int addrset_has(const addrset *set, const unsigned char *bin, int v6) {
    if (!v6) return in_ranges(set->v4, set->n4, 2, 0, (uint64_t)bin[0] << 24 | bin[1] << 16 | bin[2] << 8 | bin[3]);
    return in_ranges(set->v6, set->n6, 4, be64(bin), be64(bin + 8));
}

typedef struct {
    const uint8_t *fid, *account;
    size_t fid_n, account_n;
    int64_t now_ms;
    const addrset *resource; /* derives a missing direction; NULL: such records take the Python path */
} batch_ctx;

/* Check a parsed record as accept_columns' column-wise checks do, and give it its id. */
static int check_and_id(const batch_ctx *b, rec *o, char *key) {
    if (o->flid_n && (o->flid_n != b->fid_n || memcmp(o->flid, b->fid, b->fid_n))) return 0;
    if (o->acc_n && (o->acc_n != b->account_n || memcmp(o->acc, b->account, b->account_n))) return 0;
    if (!(o->status == 1 || o->status == 3) || !(o->action == 1 || o->action == 2) || o->direction > 2 ||
        (o->direction == 0 && !b->resource))
        return 0;
    if (!canonical(o->src, o->src_n, o->src_txt, &o->src_len, o->src_bin) ||
        !canonical(o->dst, o->dst_n, o->dst_txt, &o->dst_len, o->dst_bin))
        return 0;
    int v6 = memchr(o->src_txt, ':', o->src_len) != NULL;
    if (v6 != (memchr(o->dst_txt, ':', o->dst_len) != NULL)) return 0;
    if (o->direction == 0) /* server.core.attribution: destination the resource's -> INGRESS, else source -> EGRESS */
        o->direction = addrset_has(b->resource, o->dst_bin, v6) ? 1 : addrset_has(b->resource, o->src_bin, v6) ? 2 : 0;
    if (o->start <= 0 || o->start > b->now_ms + L.max_future_ms || o->start < b->now_ms - L.max_past_ms) return 0;
    if (o->end < o->start || o->end - o->start > L.max_window_ms) return 0;
    if (o->sport > L.max_port || o->dport > L.max_port || o->proto > L.max_protocol || o->flags > L.max_tcp_flags)
        return 0;
    if (o->pkts > o->bytes) return 0;
    if (o->rule_kind > L.rule_kind_max || o->sampling > L.sampling_rate_max || !rule_id_ok(o->rule, o->rule_n))
        return 0;
    /* f"{flow_log_id}|{src}|{dst}|{sport}|{dport}|{protocol}|{direction}|{start}|{end}" */
    char *p = key;
    memcpy(p, b->fid, b->fid_n);
    p += b->fid_n;
    *p++ = '|';
    memcpy(p, o->src_txt, o->src_len);
    p += o->src_len;
    *p++ = '|';
    memcpy(p, o->dst_txt, o->dst_len);
    p += o->dst_len;
    *p++ = '|';
    p = put_u64(p, o->sport);
    *p++ = '|';
    p = put_u64(p, o->dport);
    *p++ = '|';
    p = put_u64(p, o->proto);
    *p++ = '|';
    p = put_u64(p, o->direction);
    *p++ = '|';
    p = put_u64(p, (uint64_t)o->start);
    *p++ = '|';
    p = put_u64(p, (uint64_t)o->end);
    blake2b128_hex((const uint8_t *)key, (size_t)(p - key), o->id);
    if (o->rid_n && (o->rid_n != 32 || memcmp(o->rid, o->id, 32))) return 0;
    return 1;
}

/* Walk an IngestRequest: flow_log_id (field 1) and the records (field 2). 0 when not sure. */
static int rd_request(const uint8_t *s, size_t n, const uint8_t **fid, size_t *fid_n, Py_ssize_t *count,
                      rec *records) {
    reader r = {s, s + n};
    *fid = s;
    *fid_n = 0;
    *count = 0;
    while (r.p < r.end) {
        unsigned field, wt;
        if (!rd_tag(&r, &field, &wt)) return 0;
        const uint8_t *str;
        size_t len;
        if (field == IR_FLOW_LOG_ID) {
            if (wt != 2 || !rd_len(&r, &str, &len) || !ascii(str, len)) return 0;
            *fid = str;
            *fid_n = len;
        } else if (field == IR_RECORDS) {
            if (wt != 2 || !rd_len(&r, &str, &len)) return 0;
            if (records && !rd_record(str, len, &records[*count])) return 0;
            (*count)++;
        } else if (!rd_skip(&r, wt)) {
            return 0;
        }
    }
    return 1;
}

/* ---- canonical address strings, shared between records ---------------------------------- */

/* Collectors repeat the same addresses endlessly; one str object per distinct address keeps
 * the spool's memory window small, as the lru_cache of canonical_address does in Python.
 * A direct-mapped cache: a slot holds the last address that hashed to it. Used under the GIL. */
#define ADDR_SLOTS 16384

typedef struct {
    uint8_t len;
    char text[ADDR_MAX];
    PyObject *str;
} addr_slot;

static addr_slot *addr_cache;

static PyObject *address_str(const char *text, uint8_t len) {
    uint32_t h = 2166136261u;
    for (uint8_t i = 0; i < len; i++) h = (h ^ (uint8_t)text[i]) * 16777619u;
    addr_slot *slot = &addr_cache[h & (ADDR_SLOTS - 1)];
    if (slot->str && slot->len == len && !memcmp(slot->text, text, len)) {
        Py_INCREF(slot->str);
        return slot->str;
    }
    PyObject *s = PyUnicode_FromStringAndSize(text, len);
    if (!s) return NULL;
    Py_XSETREF(slot->str, s);
    slot->len = len;
    memcpy(slot->text, text, len);
    Py_INCREF(s);
    return s;
}

/* Rule ids repeat even more than addresses (a resource has a few dozen rules): the same kind of
 * cache, with room for the longest id. */
#define RULE_SLOTS 1024
#define RULE_CACHED_MAX 128 /* longer ids (if the limit ever allows them) are not cached */

typedef struct {
    uint8_t len;
    char text[RULE_CACHED_MAX];
    PyObject *str;
} rule_slot;

static rule_slot *rule_cache;

static PyObject *rule_str(const uint8_t *text, size_t len) {
    if (len > RULE_CACHED_MAX) return PyUnicode_FromStringAndSize((const char *)text, (Py_ssize_t)len);
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++) h = (h ^ text[i]) * 16777619u;
    rule_slot *slot = &rule_cache[h & (RULE_SLOTS - 1)];
    if (slot->str && slot->len == len && !memcmp(slot->text, text, len)) {
        Py_INCREF(slot->str);
        return slot->str;
    }
    PyObject *s = PyUnicode_FromStringAndSize((const char *)text, (Py_ssize_t)len);
    if (!s) return NULL;
    Py_XSETREF(slot->str, s);
    slot->len = (uint8_t)len;
    memcpy(slot->text, text, len);
    Py_INCREF(s);
    return s;
}

/* ---- the spool's payload and the Arrow columns of a batch --------------------------------- */

typedef struct {
    char *p;
    size_t n, cap;
    int failed;
} wbuf;

static void wb_need(wbuf *b, size_t more) {
    if (b->failed || b->n + more <= b->cap) return;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->n + more) cap *= 2;
    char *p = PyMem_RawRealloc(b->p, cap);
    if (!p) {
        b->failed = 1;
        return;
    }
    b->p = p;
    b->cap = cap;
}

static void wb_put(wbuf *b, const void *src, size_t n) {
    wb_need(b, n);
    if (b->failed) return;
    memcpy(b->p + b->n, src, n);
    b->n += n;
}

static void wb_u32(wbuf *b, uint32_t v) {
    uint8_t le[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    wb_put(b, le, 4);
}

static void wb_u64(wbuf *b, uint64_t v) {
    uint8_t le[8];
    for (int i = 0; i < 8; i++) le[i] = (uint8_t)(v >> (8 * i));
    wb_put(b, le, 8);
}

/* marshal (version 2) of a non-negative int: TYPE_INT 'i' when it fits in 31 bits, else TYPE_LONG
 * 'l' with its 15-bit digits, least significant first, as marshal.dumps writes it. */
static void m_uint(wbuf *b, uint64_t v) {
    if (v <= 0x7FFFFFFFULL) {
        wb_put(b, "i", 1);
        wb_u32(b, (uint32_t)v);
        return;
    }
    uint8_t digits[10];
    int n = 0;
    for (uint64_t x = v; x; x >>= 15) {
        digits[2 * n] = (uint8_t)(x & 0xFF);
        digits[2 * n + 1] = (uint8_t)((x >> 8) & 0x7F);
        n++;
    }
    wb_put(b, "l", 1);
    wb_u32(b, (uint32_t)n);
    wb_put(b, digits, (size_t)(2 * n));
}

/* marshal (version 2) of a str given as UTF-8: TYPE_UNICODE 'u', size, bytes. */
static void m_str(wbuf *b, const char *s, size_t n) {
    wb_put(b, "u", 1);
    wb_u32(b, (uint32_t)n);
    wb_put(b, s, n);
}

static void m_list(wbuf *b, Py_ssize_t n) {
    wb_put(b, "[", 1);
    wb_u32(b, (uint32_t)n);
}

typedef struct {
    const char *s;
    Py_ssize_t n;
    uint64_t v;
    int is_str;
} head_value;

static int head_item(PyObject *head, int k, head_value *out) {
    PyObject *o = PyTuple_GET_ITEM(head, k);
    if (PyUnicode_Check(o)) {
        out->s = PyUnicode_AsUTF8AndSize(o, &out->n);
        out->is_str = 1;
        return out->s != NULL;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) return 0;
    out->v = v;
    out->is_str = 0;
    return 1;
}

/* The payload server.pipeline.spool.encode_columns compresses: marshal.dumps(value columns, 2),
 * the value columns being FlowRecord's fields but the LogStore's (account, region, project,
 * log_store). Checked byte for byte against marshal in tests/unit/test_fastingest.py. */
static PyObject *spool_marshal(const rec *records, Py_ssize_t n, PyObject *head) {
    /* FlowRecord fields 1.. that come from head, by head index: version, flow_log_id,
     * resource_type, resource_id, network_id (account, region, project, log_store are the key). */
    static const int HEAD_VALUES[5] = {0, 2, 6, 7, 8};
    head_value hv[5];
    for (int k = 0; k < 5; k++)
        if (!head_item(head, HEAD_VALUES[k], &hv[k])) return NULL;
    wbuf b = {0};
    wb_need(&b, (size_t)n * 200 + 1024);
    wb_put(&b, "(", 1);
    wb_u32(&b, 22);
    m_list(&b, n); /* record_id */
    for (Py_ssize_t i = 0; i < n; i++) m_str(&b, records[i].id, 32);
    for (int c = 0; c < 5; c++) { /* version, flow_log_id, resource_type, resource_id, network_id */
        m_list(&b, n);
        for (Py_ssize_t i = 0; i < n; i++) {
            if (hv[c].is_str)
                m_str(&b, hv[c].s, (size_t)hv[c].n);
            else
                m_uint(&b, hv[c].v);
        }
    }
    m_list(&b, n);
    for (Py_ssize_t i = 0; i < n; i++) m_str(&b, records[i].src_txt, records[i].src_len);
    m_list(&b, n);
    for (Py_ssize_t i = 0; i < n; i++) m_str(&b, records[i].dst_txt, records[i].dst_len);
#define M_COL(expr)                                              \
    do {                                                         \
        m_list(&b, n);                                           \
        for (Py_ssize_t i = 0; i < n; i++) m_uint(&b, (expr));  \
    } while (0)
    M_COL(records[i].sport);
    M_COL(records[i].dport);
    M_COL(records[i].proto);
    M_COL(records[i].pkts);
    M_COL(records[i].bytes);
    M_COL((uint64_t)records[i].start);
    M_COL((uint64_t)records[i].end);
    M_COL(records[i].action);
    M_COL(records[i].status);
    M_COL(records[i].direction);
    M_COL(records[i].flags);
    m_list(&b, n);
    for (Py_ssize_t i = 0; i < n; i++) m_str(&b, (const char *)records[i].rule, records[i].rule_n);
    M_COL(records[i].rule_kind);
    M_COL(records[i].sampling);
#undef M_COL
    PyObject *out = b.failed ? PyErr_NoMemory() : PyBytes_FromStringAndSize(b.p, (Py_ssize_t)b.n);
    PyMem_RawFree(b.p);
    return out;
}

static PyObject *take_bytes(wbuf *b) {
    PyObject *out = b->failed ? PyErr_NoMemory() : PyBytes_FromStringAndSize(b->p, (Py_ssize_t)b->n);
    PyMem_RawFree(b->p);
    b->p = NULL;
    return out;
}

/* Arrow buffers of the batch's varying columns (little-endian, as Arrow lays them out):
 * (record_id offsets, record_id data, src offsets, src data, dst offsets, dst data,
 *  src_port, dst_port, protocol (int32), packets, bytes (uint64), start_time, end_time (int64),
 *  action, log_status, direction, tcp_flags (int32), rule_id offsets, rule_id data,
 *  rule_kind, sampling_rate (int32)). */
#define ARROW_BUFFERS 21
static PyObject *arrow_buffers(const rec *records, Py_ssize_t n) {
    wbuf w[ARROW_BUFFERS];
    memset(w, 0, sizeof w);
    size_t offs[3] = {0, 0, 0}, rule_off = 0;
    for (int k = 0; k < 3; k++) wb_u32(&w[2 * k], 0);
    wb_u32(&w[17], 0);
    for (Py_ssize_t i = 0; i < n; i++) {
        const rec *o = &records[i];
        wb_put(&w[1], o->id, 32);
        wb_put(&w[3], o->src_txt, o->src_len);
        wb_put(&w[5], o->dst_txt, o->dst_len);
        offs[0] += 32;
        offs[1] += o->src_len;
        offs[2] += o->dst_len;
        for (int k = 0; k < 3; k++) wb_u32(&w[2 * k], (uint32_t)offs[k]);
        wb_u32(&w[6], (uint32_t)o->sport);
        wb_u32(&w[7], (uint32_t)o->dport);
        wb_u32(&w[8], (uint32_t)o->proto);
        wb_u64(&w[9], o->pkts);
        wb_u64(&w[10], o->bytes);
        wb_u64(&w[11], (uint64_t)o->start);
        wb_u64(&w[12], (uint64_t)o->end);
        wb_u32(&w[13], (uint32_t)o->action);
        wb_u32(&w[14], (uint32_t)o->status);
        wb_u32(&w[15], (uint32_t)o->direction);
        wb_u32(&w[16], (uint32_t)o->flags);
        wb_put(&w[18], o->rule, o->rule_n);
        rule_off += o->rule_n;
        wb_u32(&w[17], (uint32_t)rule_off);
        wb_u32(&w[19], (uint32_t)o->rule_kind);
        wb_u32(&w[20], (uint32_t)o->sampling);
    }
    PyObject *out = PyTuple_New(ARROW_BUFFERS);
    for (int k = 0; k < ARROW_BUFFERS; k++) {
        PyObject *bytes = out ? take_bytes(&w[k]) : NULL;
        if (!bytes) {
            for (int j = k; j < ARROW_BUFFERS; j++) PyMem_RawFree(w[j].p);
            Py_XDECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(out, k, bytes);
    }
    return out;
}

/* ---- Python functions --------------------------------------------------------------------- */

#define HEAD_N 9 /* version .. network_id: the stored fields that come from the flow log */
#define ROW_N 26

/* flows: the collector's Flow tuples the records were read from (NULL for Ingest's bytes). A
 * record then shares their address strings and exact ints (the values it was read from) instead
 * of making new ones: an allocation less per value, and less memory in the spool's window. */
static PyObject *flow_addr(PyObject *const *fl, int k, const char *text, uint8_t len) {
    if (fl) {
        PyObject *s = fl[k];
        if (PyUnicode_CheckExact(s) && PyUnicode_IS_ASCII(s) && PyUnicode_GET_LENGTH(s) == len &&
            !memcmp(PyUnicode_DATA(s), text, len))
            return Py_NewRef(s);
    }
    return address_str(text, len);
}

#define FLOW_U(k, v) (fl && PyLong_CheckExact(fl[k]) ? Py_NewRef(fl[k]) : PyLong_FromUnsignedLongLong(v))
#define FLOW_I(k, v) (fl && PyLong_CheckExact(fl[k]) ? Py_NewRef(fl[k]) : PyLong_FromLongLong(v))

/* The checked records as stored rows of record_type (a FlowRecord), or with want_columns the tuple
 * (rows, spool payload, Arrow buffers). */
static PyObject *stored_rows(const rec *records, Py_ssize_t n, PyObject *head, PyTypeObject *type, int want_columns,
                             PyObject *flows) {
    PyObject *list = PyList_New(n);
    if (!list) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        const rec *o = &records[i];
        PyObject *const *fl = flows ? ((PyTupleObject *)PyList_GET_ITEM(flows, i))->ob_item : NULL;
        PyObject *row = type->tp_alloc(type, ROW_N);
        if (!row) goto fail;
        PyList_SET_ITEM(list, i, row);
        PyObject *id = PyUnicode_New(32, 127);
        if (!id) goto fail;
        memcpy(PyUnicode_DATA(id), o->id, 32);
        PyTuple_SET_ITEM(row, 0, id);
        for (int k = 0; k < HEAD_N; k++) PyTuple_SET_ITEM(row, 1 + k, Py_NewRef(PyTuple_GET_ITEM(head, k)));
        PyObject *items[12] = {
            flow_addr(fl, 0, o->src_txt, o->src_len), flow_addr(fl, 1, o->dst_txt, o->dst_len),
            FLOW_U(2, o->sport), FLOW_U(3, o->dport), FLOW_U(4, o->proto), FLOW_U(5, o->pkts),
            FLOW_U(6, o->bytes), FLOW_I(7, o->start), FLOW_I(8, o->end), FLOW_U(10, o->action),
            PyLong_FromUnsignedLongLong(o->status), PyLong_FromUnsignedLongLong(o->direction),
        };
        PyObject *tail[4] = {
            FLOW_U(9, o->flags), rule_str(o->rule, o->rule_n), PyLong_FromUnsignedLongLong(o->rule_kind),
            FLOW_U(11, o->sampling),
        };
        int bad = 0;
        for (int k = 0; k < 12; k++) {
            bad |= items[k] == NULL;
            PyTuple_SET_ITEM(row, 10 + k, items[k]);
        }
        for (int k = 0; k < 4; k++) {
            bad |= tail[k] == NULL;
            PyTuple_SET_ITEM(row, 22 + k, tail[k]);
        }
        if (bad) goto fail;
        /* Only str and int inside: the row can never be part of a reference cycle, so the
         * cyclic GC need not walk it. CPython untracks plain tuples like this itself, but not
         * tuple subclasses such as FlowRecord, and the spool and the Tail buffers hold
         * hundreds of thousands of records: the full collections of a tail benchmark run took
         * 240 ms with them tracked, 116-143 ms without (gc.callbacks timing in the server). */
        PyObject_GC_UnTrack(row);
    }
    if (want_columns) {
        PyObject *payload = spool_marshal(records, n, head);
        PyObject *bufs = payload ? arrow_buffers(records, n) : NULL;
        if (!bufs) {
            Py_XDECREF(payload);
            goto fail;
        }
        PyObject *out = PyTuple_Pack(3, list, payload, bufs);
        Py_DECREF(payload);
        Py_DECREF(bufs);
        Py_DECREF(list);
        return out;
    }
    return list;
fail:
    Py_DECREF(list);
    return NULL;
}

PyDoc_STRVAR(split_doc,
"split(data) -> (flow_log_id, number of records), or None\n\n"
"The flow log id and record count of a serialized IngestRequest, without parsing the records;\n"
"None when the message is not plainly encoded (then parse it with protobuf).");

static PyObject *fi_split(PyObject *self, PyObject *args) {
    Py_buffer buf;
    if (!PyArg_ParseTuple(args, "y*:split", &buf)) return NULL;
    const uint8_t *fid;
    size_t fid_n;
    Py_ssize_t count;
    int ok = rd_request(buf.buf, (size_t)buf.len, &fid, &fid_n, &count, NULL);
    PyObject *out = ok ? Py_BuildValue("(s#n)", (const char *)fid, (Py_ssize_t)fid_n, count) : Py_NewRef(Py_None);
    PyBuffer_Release(&buf);
    return out;
}

PyDoc_STRVAR(accept_doc,
"accept(data, head, record_type, now_ms, columns=False, matcher=None) -> list of records, or None\n\n"
"The stored records of a serialized IngestRequest, as server.core.ingest.accept_columns\n"
"returns them, when every record passes every check; None otherwise (take the Python path).\n"
"head: (version, account_id, flow_log_id, region, project, log_store, resource_type,\n"
"resource_id, network_id) of the batch's flow log; record_type: server.core.model.FlowRecord.\n"
"columns=True: (records, spool payload before compression, Arrow buffers) instead; see\n"
"spool_marshal and arrow_buffers in server/native/_fastingest.c. matcher: the flow log's resource\n"
"addresses (server.core.attribution.AddressMatcher.packed()), which give a record without a\n"
"direction its direction; None: such a batch is declined.");

/* matcher: None, or (IPv4 ranges, IPv6 ranges) as bytes (see addrset). 0 with an exception when malformed. */
static int parse_addrset(PyObject *matcher, addrset *set) {
    if (matcher == NULL || matcher == Py_None) return 1;
    if (!PyTuple_Check(matcher) || PyTuple_GET_SIZE(matcher) != 2 || !PyBytes_Check(PyTuple_GET_ITEM(matcher, 0)) ||
        !PyBytes_Check(PyTuple_GET_ITEM(matcher, 1))) {
        PyErr_SetString(PyExc_TypeError, "matcher must be None or (bytes, bytes): AddressMatcher.packed()");
        return 0;
    }
    PyObject *b4 = PyTuple_GET_ITEM(matcher, 0), *b6 = PyTuple_GET_ITEM(matcher, 1);
    const char *p4 = PyBytes_AS_STRING(b4), *p6 = PyBytes_AS_STRING(b6);
    if (PyBytes_GET_SIZE(b4) % 16 || PyBytes_GET_SIZE(b6) % 32 || (uintptr_t)p4 % 8 || (uintptr_t)p6 % 8) {
        PyErr_SetString(PyExc_ValueError, "matcher ranges must be 16-byte (IPv4) and 32-byte (IPv6) records");
        return 0;
    }
    set->v4 = (const uint64_t *)(const void *)p4;
    set->n4 = (size_t)PyBytes_GET_SIZE(b4) / 16;
    set->v6 = (const uint64_t *)(const void *)p6;
    set->n6 = (size_t)PyBytes_GET_SIZE(b6) / 32;
    return 2;
}

static PyObject *fi_accept(PyObject *self, PyObject *args) {
    Py_buffer buf;
    PyObject *head, *type_obj, *matcher = NULL;
    long long now_ms;
    int want_columns = 0;
    if (!PyArg_ParseTuple(args, "y*O!OL|pO:accept", &buf, &PyTuple_Type, &head, &type_obj, &now_ms, &want_columns,
                          &matcher))
        return NULL;
    addrset resource;
    int has_resource = parse_addrset(matcher, &resource);
    if (!has_resource) {
        PyBuffer_Release(&buf);
        return NULL;
    }
    PyObject *out = NULL;
    rec *records = NULL;
    char *key = NULL;
    if (!L.configured) {
        PyErr_SetString(PyExc_RuntimeError, "_fastingest.configure(limits) was not called (server/native/fastpath.py)");
        goto done;
    }
    if (PyTuple_GET_SIZE(head) != HEAD_N) {
        PyErr_SetString(PyExc_ValueError, "head must have 9 items");
        goto done;
    }
    if (!PyType_Check(type_obj) || !PyType_IsSubtype((PyTypeObject *)type_obj, &PyTuple_Type) ||
        ((PyTypeObject *)type_obj)->tp_basicsize != PyTuple_Type.tp_basicsize) {
        PyErr_SetString(PyExc_TypeError, "record_type must be a tuple subclass without instance fields");
        goto done;
    }
    PyTypeObject *type = (PyTypeObject *)type_obj;
    batch_ctx b;
    Py_ssize_t fid_n, account_n;
    const char *fid = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(head, 2), &fid_n);
    const char *account = fid ? PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(head, 1), &account_n) : NULL;
    if (!account) goto done;
    b.fid = (const uint8_t *)fid;
    b.fid_n = (size_t)fid_n;
    b.account = (const uint8_t *)account;
    b.account_n = (size_t)account_n;
    b.now_ms = now_ms;
    b.resource = has_resource == 2 ? &resource : NULL;

    const uint8_t *req_fid;
    size_t req_fid_n;
    Py_ssize_t n;
    if (!rd_request(buf.buf, (size_t)buf.len, &req_fid, &req_fid_n, &n, NULL)) {
        out = Py_NewRef(Py_None);
        goto done;
    }
    records = PyMem_RawMalloc(sizeof(rec) * (size_t)(n ? n : 1));
    key = PyMem_RawMalloc(b.fid_n + 2 * ADDR_MAX + 128);
    if (!records || !key) {
        PyErr_NoMemory();
        goto done;
    }
    int ok = 1;
    Py_BEGIN_ALLOW_THREADS
    Py_ssize_t count;
    ok = rd_request(buf.buf, (size_t)buf.len, &req_fid, &req_fid_n, &count, records);
    for (Py_ssize_t i = 0; ok && i < n; i++) ok = check_and_id(&b, &records[i], key);
    Py_END_ALLOW_THREADS
    if (!ok) {
        out = Py_NewRef(Py_None);
        goto done;
    }
    out = stored_rows(records, n, head, type, want_columns, NULL);
done:
    PyMem_RawFree(records);
    PyMem_RawFree(key);
    PyBuffer_Release(&buf);
    return out;
}

PyDoc_STRVAR(accept_flows_doc,
"accept_flows(flows, directions, head, record_type, now_ms) -> (records, payload, buffers), or None\n\n"
"The collector's path: flows as server.sources.flows.Flow tuples (src_addr, dst_addr, src_port,\n"
"dst_port, protocol, packets, bytes, start_time, end_time, tcp_flags, action, sampling_rate) of one\n"
"flow log, directions a bytes-like of one Direction number per flow (attribution's). Each becomes\n"
"the record Ingest would store for the same values (log_status OK, no rule), checked the same way;\n"
"returns accept(columns=True)'s triple when every flow passes, else None (take the Python path,\n"
"server.core.ingest.accept_columns, which rejects the bad ones). The list must not change during\n"
"the call (its strings are read with the GIL released).");

/* An int of a Flow tuple as uint64 (0 when it is not an int or is negative: the caller declines). */
static int flow_u64(PyObject *o, uint64_t *out) {
    if (!PyLong_Check(o)) return 0;
    unsigned long long v = PyLong_AsUnsignedLongLong(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    *out = v;
    return 1;
}

static int flow_i64(PyObject *o, int64_t *out) {
    if (!PyLong_Check(o)) return 0;
    long long v = PyLong_AsLongLong(o);
    if (v == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    *out = v;
    return 1;
}

static int flow_str(PyObject *o, const uint8_t **s, size_t *n) {
    if (!PyUnicode_Check(o) || !PyUnicode_IS_ASCII(o)) return 0;
    *s = (const uint8_t *)PyUnicode_DATA(o);
    *n = (size_t)PyUnicode_GET_LENGTH(o);
    return 1;
}

#define FLOW_N 12

static PyObject *fi_accept_flows(PyObject *self, PyObject *args) {
    PyObject *flows, *head, *type_obj;
    Py_buffer dirs;
    long long now_ms;
    if (!PyArg_ParseTuple(args, "O!y*O!OL:accept_flows", &PyList_Type, &flows, &dirs, &PyTuple_Type, &head, &type_obj,
                          &now_ms))
        return NULL;
    PyObject *out = NULL;
    rec *records = NULL;
    char *key = NULL;
    Py_ssize_t n = PyList_GET_SIZE(flows);
    if (!L.configured) {
        PyErr_SetString(PyExc_RuntimeError, "_fastingest.configure(limits) was not called (server/native/fastpath.py)");
        goto done;
    }
    if (PyTuple_GET_SIZE(head) != HEAD_N) {
        PyErr_SetString(PyExc_ValueError, "head must have 9 items");
        goto done;
    }
    if (dirs.len != n) {
        PyErr_SetString(PyExc_ValueError, "directions must hold one byte per flow");
        goto done;
    }
    if (!PyType_Check(type_obj) || !PyType_IsSubtype((PyTypeObject *)type_obj, &PyTuple_Type) ||
        ((PyTypeObject *)type_obj)->tp_basicsize != PyTuple_Type.tp_basicsize) {
        PyErr_SetString(PyExc_TypeError, "record_type must be a tuple subclass without instance fields");
        goto done;
    }
    batch_ctx b;
    Py_ssize_t fid_n, account_n;
    const char *fid = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(head, 2), &fid_n);
    const char *account = fid ? PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(head, 1), &account_n) : NULL;
    if (!account) goto done;
    b.fid = (const uint8_t *)fid;
    b.fid_n = (size_t)fid_n;
    b.account = (const uint8_t *)account;
    b.account_n = (size_t)account_n;
    b.now_ms = now_ms;
    b.resource = NULL; /* attribution gave every flow its direction */
    records = PyMem_RawMalloc(sizeof(rec) * (size_t)(n ? n : 1));
    key = PyMem_RawMalloc(b.fid_n + 2 * ADDR_MAX + 128);
    if (!records || !key) {
        PyErr_NoMemory();
        goto done;
    }
    const uint8_t *d = dirs.buf;
    static const uint8_t empty[1] = {0};
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *f = PyList_GET_ITEM(flows, i);
        rec *o = &records[i];
        memset(o, 0, offsetof(rec, src_txt));
        o->rid = o->acc = o->flid = o->rule = empty;
        PyObject **v = PyTuple_Check(f) && PyTuple_GET_SIZE(f) == FLOW_N ? ((PyTupleObject *)f)->ob_item : NULL;
        if (!v || !flow_str(v[0], &o->src, &o->src_n) || !flow_str(v[1], &o->dst, &o->dst_n) ||
            !flow_u64(v[2], &o->sport) || !flow_u64(v[3], &o->dport) || !flow_u64(v[4], &o->proto) ||
            !flow_u64(v[5], &o->pkts) || !flow_u64(v[6], &o->bytes) || !flow_i64(v[7], &o->start) ||
            !flow_i64(v[8], &o->end) || !flow_u64(v[9], &o->flags) || !flow_u64(v[10], &o->action) ||
            !flow_u64(v[11], &o->sampling)) {
            out = Py_NewRef(Py_None);
            goto done;
        }
        o->status = 1; /* LOG_STATUS_OK */
        o->direction = d[i];
    }
    int ok = 1;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; ok && i < n; i++) ok = check_and_id(&b, &records[i], key);
    Py_END_ALLOW_THREADS
    out = ok ? stored_rows(records, n, head, (PyTypeObject *)type_obj, 1, flows) : Py_NewRef(Py_None);
done:
    PyMem_RawFree(records);
    PyMem_RawFree(key);
    PyBuffer_Release(&dirs);
    return out;
}


/* ---- the collector's decoder: fixed-length data records -> Flow tuples --------------------- */

/* Information elements a Flow is made of, in the order of the spec server/sources/layout.py
 * writes (NATIVE_ROLES there): each has an offset in the record and a length, or -1. */
enum {
    R_SRC4, R_SRC6, R_DST4, R_DST6, R_SPORT, R_DPORT, R_PROTO, R_PKTS, R_PKTS_TOTAL, R_OCTETS, R_OCTETS_TOTAL,
    R_FLAGS, R_FWD, R_SAMPLING, R_SAMPLER_RANDOM, R_PKT_INTERVAL, R_PKT_SPACE, R_SELECTOR_ID, R_SAMPLER_ID,
    R_INIT_MS, R_START_MS, R_START_S, R_START_US, R_START_NS, R_START_UPTIME, R_START_DELTA, R_END_MS, R_END_S,
    R_END_US, R_END_NS, R_END_UPTIME, R_END_DELTA, R_DURATION_MS, R_DURATION_US, R_COUNT
};

typedef struct {
    int32_t size, ipfix, off[R_COUNT], len[R_COUNT];
} flow_spec;

#define HAS(r) (sp->off[r] >= 0)

static uint64_t rd_be(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v = (v << 8) | p[i];
    return v;
}

#define NTP_EPOCH_OFFSET_S 2208988800LL
#define TIME_LIMIT (1LL << 61) /* beyond: the Python path (its ints do not overflow) */

static int fits(uint64_t v) { return v < (uint64_t)TIME_LIMIT; }

/* layout.py's when(): the time of one end, 0 = none of its elements; *ok = 0 when out of range. */
static int flow_when(const flow_spec *sp, const uint8_t *r, int ms, int s, int us, int ns, int up, int delta,
                     int64_t E, int64_t U, int64_t init, int64_t *out, int *ok) {
    uint64_t v;
    if (sp->off[ms] >= 0) {
        v = rd_be(r + sp->off[ms], sp->len[ms]);
        if (!fits(v)) *ok = 0;
        *out = (int64_t)v;
    } else if (sp->off[us] >= 0 || sp->off[ns] >= 0) {
        int k = sp->off[us] >= 0 ? us : ns;
        v = rd_be(r + sp->off[k], sp->len[k]);
        *out = ((int64_t)(v >> 32) - NTP_EPOCH_OFFSET_S) * 1000 + (int64_t)(((v & 0xFFFFFFFFULL) * 1000) >> 32);
    } else if (sp->off[s] >= 0) {
        v = rd_be(r + sp->off[s], sp->len[s]);
        if (v >= (uint64_t)TIME_LIMIT / 1000) *ok = 0;
        *out = (int64_t)v * 1000;
    } else if (sp->off[up] >= 0) {
        v = rd_be(r + sp->off[up], sp->len[up]);
        if (!fits(v)) *ok = 0;
        if (!sp->ipfix) /* NetFlow v9: ms of sysUpTime; the difference to the header's, signed 32 bits */
            *out = E - ((int64_t)(((uint64_t)U - v + 0x80000000ULL) & 0xFFFFFFFFULL) - 0x80000000LL);
        else
            *out = init + (int64_t)v;
    } else if (sp->off[delta] >= 0) {
        v = rd_be(r + sp->off[delta], sp->len[delta]);
        *out = E - (int64_t)(v / 1000);
    } else {
        return 0;
    }
    return 1;
}

static PyObject *flow_int(int64_t v) { return PyLong_FromLongLong(v); }

PyDoc_STRVAR(extract_doc,
"extract(body, spec, E, U, I, S) -> list of Flow tuples, or None\n\n"
"server/sources/layout.py's generated extract() for a template of fixed-length fields, in C: the\n"
"flows of one data set's records (trailing padding ignored). spec: Layout.native (record size,\n"
"IPFIX or not, then offset and length of each element of NATIVE_ROLES, -1 when absent). E export\n"
"time (ms), U sysUpTime (v9), I systemInitTimeMilliseconds (IPFIX; 0 unknown), S the sampling\n"
"interval in force. None when not sure (a sampler id to look up, a time past 2**61): then the\n"
"Python extract() decides, so both give the same flows (tests/collector/test_native_decoder.py).");

static PyObject *fi_extract(PyObject *self, PyObject *args) {
    Py_buffer body, spec_buf;
    long long E, U, I, S;
    if (!PyArg_ParseTuple(args, "y*y*LLLL:extract", &body, &spec_buf, &E, &U, &I, &S)) return NULL;
    PyObject *out = NULL;
    flow_spec spec;
    const flow_spec *sp = &spec;
    if (spec_buf.len != (Py_ssize_t)sizeof spec) {
        PyErr_SetString(PyExc_ValueError, "spec must be Layout.native");
        goto done;
    }
    memcpy(&spec, spec_buf.buf, sizeof spec);
    if (spec.size <= 0 || (!HAS(R_SRC4) && !HAS(R_SRC6)) || (!HAS(R_DST4) && !HAS(R_DST6))) {
        PyErr_SetString(PyExc_ValueError, "spec has no record size or no addresses");
        goto done;
    }
    for (int k = 0; k < R_COUNT; k++)
        if (spec.off[k] >= 0 && (spec.len[k] < 1 || spec.off[k] + spec.len[k] > spec.size)) {
            PyErr_SetString(PyExc_ValueError, "spec places an element outside the record");
            goto done;
        }
    if (!HAS(R_SAMPLING) && !HAS(R_SAMPLER_RANDOM) && !HAS(R_PKT_INTERVAL) && (HAS(R_SELECTOR_ID) || HAS(R_SAMPLER_ID))) {
        out = Py_NewRef(Py_None); /* the interval is in the session's sampler table: Python's */
        goto done;
    }
    Py_ssize_t n = body.len / spec.size;
    PyObject *list = PyList_New(n);
    if (!list) goto done;
    const uint8_t *base = body.buf;
    int start_from_uptime = HAS(R_START_UPTIME) && !HAS(R_START_MS) && !HAS(R_START_US) && !HAS(R_START_NS) &&
                            !HAS(R_START_S);
    int end_from_uptime = HAS(R_END_UPTIME) && !HAS(R_END_MS) && !HAS(R_END_US) && !HAS(R_END_NS) && !HAS(R_END_S);
    int unknown_init = spec.ipfix && !HAS(R_INIT_MS) && start_from_uptime && end_from_uptime;
    for (Py_ssize_t i = 0; i < n; i++) {
        const uint8_t *r = base + i * spec.size;
#define V(role) rd_be(r + spec.off[role], spec.len[role])
        char src[INET6_ADDRSTRLEN], dst[INET6_ADDRSTRLEN];
        size_t src_n, dst_n;
        static const uint8_t ZERO4[4] = {0, 0, 0, 0};
        /* an IPv6 flow in a template with both: the IPv4 field is 0.0.0.0 */
        int src6 = HAS(R_SRC6) && (!HAS(R_SRC4) || !memcmp(r + spec.off[R_SRC4], ZERO4, 4));
        int dst6 = HAS(R_DST6) && (!HAS(R_DST4) || !memcmp(r + spec.off[R_DST4], ZERO4, 4));
        if (src6) {
            if (!inet_ntop(AF_INET6, r + spec.off[R_SRC6], src, sizeof src)) goto unsure;
            src_n = strlen(src);
        } else {
            src_n = ntop4(r + spec.off[R_SRC4], src);
        }
        if (dst6) {
            if (!inet_ntop(AF_INET6, r + spec.off[R_DST6], dst, sizeof dst)) goto unsure;
            dst_n = strlen(dst);
        } else {
            dst_n = ntop4(r + spec.off[R_DST4], dst);
        }
        uint64_t proto = HAS(R_PROTO) ? V(R_PROTO) : 0;
        uint64_t sport = HAS(R_SPORT) ? V(R_SPORT) : 0, dport = HAS(R_DPORT) ? V(R_DPORT) : 0;
        if (HAS(R_PROTO) && (proto == 1 || proto == 58)) sport = dport = 0; /* ICMP: no ports */
        uint64_t pkts = HAS(R_PKTS) ? V(R_PKTS) : HAS(R_PKTS_TOTAL) ? V(R_PKTS_TOTAL) : 0;
        uint64_t octets = HAS(R_OCTETS) ? V(R_OCTETS) : HAS(R_OCTETS_TOTAL) ? V(R_OCTETS_TOTAL) : 0;
        uint64_t flags = HAS(R_FLAGS) ? V(R_FLAGS) & 0xFFF : 0;
        uint64_t action = HAS(R_FWD) && ((V(R_FWD) & 0xFF) >> 6) == 2 ? 2 : 1;
        int64_t sampling;
        if (HAS(R_SAMPLING)) {
            sampling = (int64_t)V(R_SAMPLING);
        } else if (HAS(R_SAMPLER_RANDOM)) {
            sampling = (int64_t)V(R_SAMPLER_RANDOM);
        } else if (HAS(R_PKT_INTERVAL)) {
            uint64_t a = V(R_PKT_INTERVAL);
            sampling = (int64_t)(HAS(R_PKT_SPACE) ? (a ? (a + V(R_PKT_SPACE)) / a : 0) : a);
            if (HAS(R_PKT_SPACE) && a && a + V(R_PKT_SPACE) < a) goto unsure; /* Python's ints do not wrap */
        } else {
            sampling = S;
        }
        if ((HAS(R_SAMPLING) || HAS(R_SAMPLER_RANDOM) || HAS(R_PKT_INTERVAL)) && sampling < 0) goto unsure;
        int64_t init = HAS(R_INIT_MS) ? (int64_t)V(R_INIT_MS) : I;
        if (HAS(R_INIT_MS) && !fits(V(R_INIT_MS))) goto unsure;
        int ok = 1;
        int64_t start = 0, end = 0;
        int has_start = flow_when(sp, r, R_START_MS, R_START_S, R_START_US, R_START_NS, R_START_UPTIME,
                                  R_START_DELTA, E, U, init, &start, &ok);
        int has_end = flow_when(sp, r, R_END_MS, R_END_S, R_END_US, R_END_NS, R_END_UPTIME, R_END_DELTA, E, U, init,
                                &end, &ok);
        if (!ok) goto unsure;
        if (unknown_init && !I) { /* relative to a system init time not told yet: end at the export time */
            start = E - (int64_t)V(R_END_UPTIME) + (int64_t)V(R_START_UPTIME);
            end = E;
        }
        int has_duration = HAS(R_DURATION_MS) || HAS(R_DURATION_US);
        int64_t duration = 0;
        if (HAS(R_DURATION_MS)) {
            if (!fits(V(R_DURATION_MS))) goto unsure;
            duration = (int64_t)V(R_DURATION_MS);
        } else if (HAS(R_DURATION_US)) {
            duration = (int64_t)(V(R_DURATION_US) / 1000);
        }
        if (!has_start && !has_end) {
            start = end = E;
        } else if (!has_start) {
            start = has_duration ? end - duration : end;
        } else if (!has_end) {
            end = has_duration ? start + duration : start;
        }
#undef V
        PyObject *t = PyTuple_New(FLOW_N);
        if (!t) goto fail;
        PyList_SET_ITEM(list, i, t);
        PyObject *items[FLOW_N] = {
            address_str(src, (uint8_t)src_n), address_str(dst, (uint8_t)dst_n),
            PyLong_FromUnsignedLongLong(sport), PyLong_FromUnsignedLongLong(dport),
            PyLong_FromUnsignedLongLong(proto), PyLong_FromUnsignedLongLong(pkts),
            PyLong_FromUnsignedLongLong(octets), flow_int(start), flow_int(end),
            PyLong_FromUnsignedLongLong(flags), PyLong_FromUnsignedLongLong(action), flow_int(sampling),
        };
        int bad = 0;
        for (int k = 0; k < FLOW_N; k++) {
            bad |= items[k] == NULL;
            PyTuple_SET_ITEM(t, k, items[k]);
        }
        if (bad) goto fail;
    }
    out = list;
    goto done;
unsure:
    Py_DECREF(list);
    out = Py_NewRef(Py_None);
    goto done;
fail:
    Py_DECREF(list);
done:
    PyBuffer_Release(&body);
    PyBuffer_Release(&spec_buf);
    return out;
}

PyDoc_STRVAR(blake2b_doc, "blake2b128_hex(data) -> str: hashlib.blake2b(data, digest_size=16).hexdigest()");

static PyObject *fi_blake2b(PyObject *self, PyObject *args) {
    Py_buffer buf;
    char out[32];
    if (!PyArg_ParseTuple(args, "y*:blake2b128_hex", &buf)) return NULL;
    blake2b128_hex(buf.buf, (size_t)buf.len, out);
    PyBuffer_Release(&buf);
    return PyUnicode_FromStringAndSize(out, 32);
}

/* ---- the record limits ------------------------------------------------------------------ */

#define INT_LIMITS 9
static const char *const LIMIT_NAMES[INT_LIMITS] = {
    "max_future_ms", "max_past_ms", "max_window_ms", "max_port", "max_protocol",
    "max_tcp_flags", "rule_id_max", "sampling_rate_max", "rule_kind_max",
};

PyDoc_STRVAR(configure_doc,
"configure(limits) -> None\n\n"
"Set the record limits accept() applies: server.core.records.record_limits(), a dict of\n"
"max_future_ms, max_past_ms, max_window_ms, max_port, max_protocol, max_tcp_flags,\n"
"rule_id_max, sampling_rate_max, rule_kind_max (non-negative ints) and rule_id_chars (the\n"
"ASCII characters a rule id may hold). Every key is required; accept() refuses to run before.");

static PyObject *fi_configure(PyObject *self, PyObject *args) {
    PyObject *d;
    if (!PyArg_ParseTuple(args, "O!:configure", &PyDict_Type, &d)) return NULL;
    limits_t n;
    memset(&n, 0, sizeof n);
    uint64_t v[INT_LIMITS];
    for (int k = 0; k < INT_LIMITS; k++) {
        PyObject *o = PyDict_GetItemString(d, LIMIT_NAMES[k]);
        if (!o) return PyErr_Format(PyExc_KeyError, "configure: the limit %s is missing", LIMIT_NAMES[k]);
        v[k] = PyLong_AsUnsignedLongLong(o);
        if (PyErr_Occurred()) return NULL;
        if (k < 3 && v[k] > (uint64_t)INT64_MAX / 4)
            return PyErr_Format(PyExc_ValueError, "configure: %s is too large", LIMIT_NAMES[k]);
    }
    n.max_future_ms = (int64_t)v[0];
    n.max_past_ms = (int64_t)v[1];
    n.max_window_ms = (int64_t)v[2];
    n.max_port = v[3];
    n.max_protocol = v[4];
    n.max_tcp_flags = v[5];
    n.rule_id_max = v[6];
    n.sampling_rate_max = v[7];
    n.rule_kind_max = v[8];
    PyObject *chars = PyDict_GetItemString(d, "rule_id_chars");
    if (!chars || !PyUnicode_Check(chars))
        return PyErr_Format(PyExc_KeyError, "configure: rule_id_chars (a str) is missing");
    Py_ssize_t len;
    const char *s = PyUnicode_AsUTF8AndSize(chars, &len);
    if (!s) return NULL;
    for (Py_ssize_t i = 0; i < len; i++) {
        if ((uint8_t)s[i] & 0x80) return PyErr_Format(PyExc_ValueError, "configure: rule_id_chars must be ASCII");
        n.rule_id_char[(uint8_t)s[i]] = 1;
    }
    n.configured = 1;
    L = n;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(limits_doc, "limits() -> dict: the limits configure() set (what accept() applies), or None before.");

static PyObject *fi_limits(PyObject *self, PyObject *args) {
    if (!L.configured) Py_RETURN_NONE;
    char chars[129];
    int n = 0;
    for (int c = 0; c < 128; c++)
        if (L.rule_id_char[c]) chars[n++] = (char)c;
    chars[n] = 0;
    return Py_BuildValue("{s:L,s:L,s:L,s:K,s:K,s:K,s:K,s:K,s:K,s:s}", "max_future_ms", (long long)L.max_future_ms,
                         "max_past_ms", (long long)L.max_past_ms, "max_window_ms", (long long)L.max_window_ms,
                         "max_port", (unsigned long long)L.max_port, "max_protocol",
                         (unsigned long long)L.max_protocol, "max_tcp_flags", (unsigned long long)L.max_tcp_flags,
                         "rule_id_max", (unsigned long long)L.rule_id_max, "sampling_rate_max",
                         (unsigned long long)L.sampling_rate_max, "rule_kind_max",
                         (unsigned long long)L.rule_kind_max, "rule_id_chars", chars);
}

static PyMethodDef methods[] = {
    {"configure", fi_configure, METH_VARARGS, configure_doc},
    {"limits", fi_limits, METH_NOARGS, limits_doc},
    {"split", fi_split, METH_VARARGS, split_doc},
    {"accept", fi_accept, METH_VARARGS, accept_doc},
    {"accept_flows", fi_accept_flows, METH_VARARGS, accept_flows_doc},
    {"extract", fi_extract, METH_VARARGS, extract_doc},
    {"blake2b128_hex", fi_blake2b, METH_VARARGS, blake2b_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastingest",
    "Fast path of the Ingest RPC (see server/native/_fastingest.c).", -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastingest(void) {
    addr_cache = PyMem_RawCalloc(ADDR_SLOTS, sizeof(addr_slot));
    rule_cache = PyMem_RawCalloc(RULE_SLOTS, sizeof(rule_slot));
    if (!addr_cache || !rule_cache) return PyErr_NoMemory();
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    PyObject *fields = Py_BuildValue(
        "{s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,"
        "s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i}",
        "record_id", F_RECORD_ID, "version", F_VERSION, "account_id", F_ACCOUNT_ID, "flow_log_id", F_FLOW_LOG_ID,
        "region", F_REGION, "resource_type", F_RESOURCE_TYPE, "resource_id", F_RESOURCE_ID,
        "network_id", F_NETWORK_ID, "src_addr", F_SRC_ADDR, "dst_addr", F_DST_ADDR, "src_port", F_SRC_PORT,
        "dst_port", F_DST_PORT, "protocol", F_PROTOCOL, "packets", F_PACKETS, "bytes", F_BYTES,
        "start_time", F_START_TIME, "end_time", F_END_TIME, "action", F_ACTION, "log_status", F_LOG_STATUS,
        "direction", F_DIRECTION, "tcp_flags", F_TCP_FLAGS, "project", F_PROJECT, "log_store", F_LOG_STORE,
        "rule_id", F_RULE_ID, "rule_kind", F_RULE_KIND, "sampling_rate", F_SAMPLING_RATE);
    PyObject *ingest = Py_BuildValue("{s:i,s:i}", "flow_log_id", IR_FLOW_LOG_ID, "records", IR_RECORDS);
    if (!fields || !ingest || PyModule_AddObject(m, "FIELDS", fields) < 0) goto fail;
    fields = NULL;
    if (PyModule_AddObject(m, "INGEST_FIELDS", ingest) < 0) goto fail;
    return m;
fail:
    Py_XDECREF(fields);
    Py_XDECREF(ingest);
    Py_DECREF(m);
    return NULL;
}
