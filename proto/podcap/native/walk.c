/*
 * podcap's record walker: the collector's per-chunk framing check, in C so that no Python runs per packet.
 *
 * A chunk is a run of bare little-endian pcap records (16-byte header: ts_sec, ts_frac, caplen, wirelen, then
 * caplen bytes). podcap_scan_records walks it exactly as podcap.pcapfile.scan_records (the Python reference
 * implementation, used when this library is not built) does, and reports the same results and errors. It is a plain
 * C library with no Python API (loaded through ctypes), so building it needs a C compiler but no Python headers.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

enum {
    PODCAP_SCAN_OK = 0,
    PODCAP_SCAN_TRUNCATED_HEADER = 1, /* fewer than 16 bytes left where a record header should start */
    PODCAP_SCAN_BAD_CAPLEN = 2,       /* caplen > snaplen or caplen > wire length */
    PODCAP_SCAN_TRUNCATED_RECORD = 3, /* the record's data runs past the end */
};

struct podcap_scan {
    uint64_t packets;      /* whole records accepted */
    uint64_t length;       /* bytes they span (the cut point) */
    uint64_t last_ts_ns;   /* timestamp of the last accepted record, 0 if none */
    uint64_t error_offset; /* offset of the offending record (errors only) */
    uint64_t caplen;       /* its caplen (BAD_CAPLEN, TRUNCATED_RECORD) */
    uint64_t wirelen;      /* its wire length (BAD_CAPLEN) */
};

static inline uint32_t le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* At most 2^32 * 10^9 + 2^32 * 1000 < 2^63: fits a signed 64-bit integer. */
static inline int64_t ts_ns(const uint8_t *rec, uint32_t ts_scale) {
    return (int64_t)le32(rec) * 1000000000ll + (int64_t)le32(rec + 4) * (int64_t)ts_scale;
}

/*
 * Walk the records in data[0:len). Stops before the record that would make more than max_packets records or end
 * past max_bytes, or (has_until) whose timestamp is after until_ns; negative limits stop at once. Every record it
 * reaches must be well formed: returns a PODCAP_SCAN_* code, and out says where.
 */
int podcap_scan_records(const uint8_t *data, uint64_t len, uint32_t snaplen, uint32_t ts_scale,
                        int64_t max_packets, int64_t max_bytes, int has_until, int64_t until_ns,
                        struct podcap_scan *out) {
    uint64_t off = 0, last_off = 0, n = 0;
    int accepted = 0;
    uint64_t byte_cap = len;
    memset(out, 0, sizeof(*out));
    if (max_packets < 0) max_packets = 0;
    if (max_bytes < 0) max_bytes = 0;
    if ((uint64_t)max_bytes < byte_cap) byte_cap = (uint64_t)max_bytes;
    while (off < len && n < (uint64_t)max_packets) {
        if (len - off < 16) {
            out->error_offset = off;
            return PODCAP_SCAN_TRUNCATED_HEADER;
        }
        const uint8_t *rec = data + off;
        uint64_t incl = le32(rec + 8), orig = le32(rec + 12);
        if (incl > snaplen || incl > orig) {
            out->error_offset = off;
            out->caplen = incl;
            out->wirelen = orig;
            return PODCAP_SCAN_BAD_CAPLEN;
        }
        uint64_t next = off + 16 + incl;
        if (next > len) {
            out->error_offset = off;
            out->caplen = incl;
            return PODCAP_SCAN_TRUNCATED_RECORD;
        }
        if (next > byte_cap) break;
        if (has_until && ts_ns(rec, ts_scale) > until_ns) break;
        last_off = off;
        accepted = 1;
        off = next;
        n++;
    }
    out->packets = n;
    out->length = off;
    out->last_ts_ns = accepted ? (uint64_t)ts_ns(data + last_off, ts_scale) : 0;
    return PODCAP_SCAN_OK;
}
