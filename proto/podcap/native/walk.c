/*
 * The record walker (podcap._native_walk): the collector's per-chunk framing check, in C so that no Python runs per
 * packet.
 *
 * A chunk is a run of bare little-endian pcap records (podcap_native.h). podcap_scan_records walks it exactly as
 * podcap.formats.pcap.scan_records_python (the Python reference, used when this library is not built) does, and reports
 * the same results and errors; podcap.pcapwalk loads it.
 */
#include "podcap_native.h"

static inline int scan(const uint8_t *data, uint64_t len, uint32_t snaplen, uint32_t ts_scale, int64_t max_packets,
                       int64_t max_bytes, const int has_until, int64_t until_ns, struct podcap_scan *out) {
    uint64_t off = 0, last_off = 0, n = 0;
    int accepted = 0;
    uint64_t byte_cap = len;
    memset(out, 0, sizeof(*out));
    if (max_packets < 0) max_packets = 0;
    if (max_bytes < 0) max_bytes = 0;
    if ((uint64_t)max_bytes < byte_cap) byte_cap = (uint64_t)max_bytes;
    /* podcap_record_check's steps written out: through it, this loop (about 2 ns a record) compiled 10-15% slower. */
    while (off < len && n < (uint64_t)max_packets) {
        const uint8_t *rec = data + off;
        if (len - off < PODCAP_RECORD_HEADER) {
            out->error_offset = off;
            return PODCAP_TRUNCATED_HEADER;
        }
        if (podcap_record_header_check(rec, snaplen) != PODCAP_OK) {
            out->error_offset = off;
            out->caplen = podcap_record_caplen(rec);
            out->wirelen = podcap_record_wirelen(rec);
            return PODCAP_BAD_CAPLEN;
        }
        uint64_t next = off + PODCAP_RECORD_HEADER + podcap_record_caplen(rec);
        if (next > len) {
            out->error_offset = off;
            out->caplen = podcap_record_caplen(rec);
            return PODCAP_TRUNCATED_RECORD;
        }
        if (next > byte_cap) break;
        if (has_until && (int64_t)podcap_record_ts_ns(rec, ts_scale) > until_ns) break;
        last_off = off;
        accepted = 1;
        off = next;
        n++;
    }
    out->packets = n;
    out->length = off;
    out->last_ts_ns = accepted ? podcap_record_ts_ns(data + last_off, ts_scale) : 0;
    return PODCAP_OK;
}

/*
 * Walk the records in data[0:len). Stops before the record that would make more than max_packets records or end
 * past max_bytes, or (has_until) whose timestamp is after until_ns; negative limits stop at once. Every record it
 * reaches must be well formed: returns an enum podcap_error code, and out says where.
 *
 * The loop is compiled twice, with and without the timestamp test (has_until a constant in each): as fast as the
 * walker was before the shared header in both cases, where one loop testing has_until was ~8% slower with it.
 */
int podcap_scan_records(const uint8_t *data, uint64_t len, uint32_t snaplen, uint32_t ts_scale, int64_t max_packets,
                        int64_t max_bytes, int has_until, int64_t until_ns, struct podcap_scan *out) {
    if (has_until) return scan(data, len, snaplen, ts_scale, max_packets, max_bytes, 1, until_ns, out);
    return scan(data, len, snaplen, ts_scale, max_packets, max_bytes, 0, 0, out);
}
