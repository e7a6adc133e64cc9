/*
 * podcap_native.h: the one header of podcap's C (proto/podcap/native/). What the three parts share is defined here
 * once: byte order, the pcap record (its layout, its timestamp, the check every reader applies), the error codes, and
 * the pcapng block the C writes (the Enhanced Packet Block). Every function a part exports is declared here too, so
 * the compiler holds each definition to its declaration (the test build adds -Wmissing-prototypes).
 *
 * The parts, each its own shared object so that each program loads what it needs (podcap.native.library):
 *   walk.c   podcap._native_walk    the record walker: the collector's check of every chunk (podcap.pcapwalk)
 *   chunks.c podcap._native_chunks  the agent's pcap_handler that cuts chunks by bytes (podcap.agent.capture.chunkbuf)
 *   merge.c  podcap._native_merge   the CLI's merge and live view into pcapng (podcap.collector.cli.get.pcapmerge)
 * They are plain C libraries with no Python API, loaded through ctypes, so building them needs a C compiler but no
 * Python headers. The Python loaders mirror the structs they pass field for field (struct podcap_scan and struct
 * podcap_merge_error below, struct podcap_chunkbuf in chunks.c, the only file that uses it), and the error codes below
 * are podcap.native.Error (tests/unit/shared/test_native_c.py holds both to the C, offset by offset and code by code,
 * and compiles every part with -Wall -Wextra -Werror).
 */
#ifndef PODCAP_NATIVE_H
#define PODCAP_NATIVE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* podcap's pcap files are little-endian (the byte order of every agent, on x86-64 and arm64); records and pcapng
 * blocks are read and written in host byte order. */
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "podcap's pcap files are little-endian, and its C reads and writes them in host byte order"
#endif

/* ---- error codes (podcap.native.Error: every enumerator has its value written out, and a test compares) ---- */

enum podcap_error {
    PODCAP_OK = 0,
    PODCAP_TRUNCATED_HEADER = 1, /* fewer than 16 bytes left where a record header should start */
    PODCAP_BAD_CAPLEN = 2,       /* caplen > snaplen or caplen > wire length */
    PODCAP_TRUNCATED_RECORD = 3, /* the record's data runs past the end */
    PODCAP_READ_ERROR = 4,       /* reading an input failed: errno_value */
    PODCAP_WRITE_ERROR = 5,      /* writing the output failed: errno_value (EPIPE: the reader went away) */
    PODCAP_NO_MEMORY = 6,
};

/* ---- the pcap record: ts_sec, ts_frac, caplen, wire length (4 bytes each), then caplen bytes ---- */

#define PODCAP_RECORD_HEADER 16u

static inline uint32_t podcap_le32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static inline uint32_t podcap_record_caplen(const uint8_t *rec) { return podcap_le32(rec + 8); }
static inline uint32_t podcap_record_wirelen(const uint8_t *rec) { return podcap_le32(rec + 12); }

/* Nanoseconds since the epoch; ts_scale is nanoseconds per unit of ts_frac (1 or 1000). At most
 * 2^32 * 10^9 + 2^32 * 1000 < 2^63: fits a signed 64-bit integer as well. */
static inline uint64_t podcap_record_ts_ns(const uint8_t *rec, uint32_t ts_scale) {
    return (uint64_t)podcap_le32(rec) * 1000000000ull + (uint64_t)podcap_le32(rec + 4) * ts_scale;
}

/* The check of a record header every reader applies (as podcap.formats.pcap does): caplen within the snaplen and within
 * the wire length. PODCAP_OK or PODCAP_BAD_CAPLEN. */
static inline int podcap_record_header_check(const uint8_t *rec, uint32_t snaplen) {
    uint32_t incl = podcap_record_caplen(rec), orig = podcap_record_wirelen(rec);
    return incl > snaplen || incl > orig ? PODCAP_BAD_CAPLEN : PODCAP_OK;
}

/* The record at rec, with avail bytes from rec to the end of the data: PODCAP_OK when it is whole and well formed
 * (*size: its bytes, header included), else PODCAP_TRUNCATED_HEADER, PODCAP_BAD_CAPLEN or PODCAP_TRUNCATED_RECORD. */
static inline int podcap_record_check(const uint8_t *rec, uint64_t avail, uint32_t snaplen, uint64_t *size) {
    if (avail < PODCAP_RECORD_HEADER) return PODCAP_TRUNCATED_HEADER;
    if (podcap_record_header_check(rec, snaplen) != PODCAP_OK) return PODCAP_BAD_CAPLEN;
    *size = PODCAP_RECORD_HEADER + (uint64_t)podcap_record_caplen(rec);
    return *size > avail ? PODCAP_TRUNCATED_RECORD : PODCAP_OK;
}

/* ---- pcapng: the Enhanced Packet Block (the only block the C writes; the Section Header, the Interface Description
 * and Statistics Blocks and their options are written once per file or interface by the Python encoder, and the
 * EPB below is tested byte for byte against that encoder's epb()) ---- */

#define PODCAP_PCAPNG_EPB 6u
/* type, total length, interface, timestamp high, timestamp low, caplen, wire length, [data, padding], total length */
#define PODCAP_PCAPNG_EPB_FIXED 32u

/* An EPB's bytes for caplen bytes of packet data: data padded to 32 bits. */
static inline size_t podcap_epb_size(uint32_t caplen) {
    return PODCAP_PCAPNG_EPB_FIXED + (size_t)caplen + (size_t)(-caplen & 3u);
}

/* The EPB of one packet (data, caplen, wire length) at o, with opts_len bytes of options (0: none; else a multiple
 * of 4, ending in opt_endofopt) that the caller writes at o + 28 + caplen + padding (podcap_opt_comment_write,
 * podcap_opt_end_write): exactly podcap_epb_size(caplen) + opts_len bytes. ts is in the interface's resolution
 * (if_tsresol). */
static inline void podcap_epb_write_opts(uint8_t *o, const uint8_t *data, uint32_t caplen, uint32_t wirelen,
                                         uint32_t iface, uint64_t ts, uint32_t opts_len) {
    uint32_t pad = (uint32_t)(-caplen & 3u);
    uint32_t total = (uint32_t)podcap_epb_size(caplen) + opts_len;
    uint32_t head[7] = {PODCAP_PCAPNG_EPB, total, iface, (uint32_t)(ts >> 32), (uint32_t)ts, caplen, wirelen};
    memcpy(o, head, sizeof(head));
    memcpy(o + 28, data, caplen);
    memset(o + 28 + caplen, 0, pad);
    memcpy(o + 28 + caplen + pad + opts_len, &total, 4);
}

/* The EPB of one packet without options (the merge's path for every packet that carries no comment). */
static inline void podcap_epb_write(uint8_t *o, const uint8_t *data, uint32_t caplen, uint32_t wirelen, uint32_t iface,
                                    uint64_t ts) {
    podcap_epb_write_opts(o, data, caplen, wirelen, iface, ts, 0);
}

#define PODCAP_PCAPNG_OPT_ENDOFOPT 0u
#define PODCAP_PCAPNG_OPT_COMMENT 1u

/* An opt_comment of len bytes (at most 65535): code, length, the text padded to 32 bits. */
static inline size_t podcap_opt_comment_size(uint32_t len) { return 4u + (size_t)len + (size_t)(-len & 3u); }

/* The opt_comment at o: podcap_opt_comment_size(len) bytes. */
static inline size_t podcap_opt_comment_write(uint8_t *o, const uint8_t *text, uint32_t len) {
    uint16_t head[2] = {PODCAP_PCAPNG_OPT_COMMENT, (uint16_t)len};
    memcpy(o, head, 4);
    memcpy(o + 4, text, len);
    memset(o + 4 + len, 0, -len & 3u);
    return podcap_opt_comment_size(len);
}

/* opt_endofopt at o: 4 bytes (after the last option). */
static inline size_t podcap_opt_end_write(uint8_t *o) {
    memset(o, 0, 4);
    return 4;
}

/* ---- walk.c: the record walker ---- */

struct podcap_scan {
    uint64_t packets;      /* whole records accepted */
    uint64_t length;       /* bytes they span (the cut point) */
    uint64_t last_ts_ns;   /* timestamp of the last accepted record, 0 if none */
    uint64_t error_offset; /* offset of the offending record (errors only) */
    uint64_t caplen;       /* its caplen (BAD_CAPLEN, TRUNCATED_RECORD) */
    uint64_t wirelen;      /* its wire length (BAD_CAPLEN) */
};

int podcap_scan_records(const uint8_t *data, uint64_t len, uint32_t snaplen, uint32_t ts_scale, int64_t max_packets,
                        int64_t max_bytes, int has_until, int64_t until_ns, struct podcap_scan *out);

/* ---- chunks.c: the agent's chunk buffer ---- */

struct podcap_chunkbuf; /* chunks.c */
struct podcap_pkthdr; /* libpcap's struct pcap_pkthdr (chunks.c spells it out) */

extern const uint8_t podcap_chunk_message_tag;
extern const uint8_t podcap_chunk_records_tag;
int podcap_chunk_init(struct podcap_chunkbuf *b, uint64_t cap);
void podcap_chunk_free(struct podcap_chunkbuf *b);
void podcap_chunk_handler(unsigned char *user, const struct podcap_pkthdr *h, const unsigned char *bytes);
uint64_t podcap_chunk_head(struct podcap_chunkbuf *b, uint64_t *packets, uint8_t *first);
uint64_t podcap_chunk_take_head(struct podcap_chunkbuf *b, const uint8_t *fields, uint64_t n, uint8_t **data);
void podcap_chunk_release(uint8_t *data);
void podcap_chunk_reset(struct podcap_chunkbuf *b);

/* ---- merge.c: the merge into pcapng and the live view ---- */

/* What went wrong (code: enum podcap_error). */
struct podcap_merge_error {
    int32_t code;
    int32_t errno_value;
    uint64_t input;  /* which input (index as added) */
    uint64_t offset; /* offset of the offending record in its file or stream */
    uint64_t caplen;
    uint64_t wirelen;
    uint64_t left; /* bytes left from offset (truncation) */
};

/* podcap_merge_run's answers besides 0 (done) and -code (an error). */
#define PODCAP_MERGE_MORE 1 /* max_out reached: call again */
#define PODCAP_MERGE_NEED 2 /* a fed input needs its next block: podcap_merge_needed says which */

struct podcap_merge;
struct podcap_live;

struct podcap_merge *podcap_merge_new(uint32_t n_inputs, int out_fd, uint64_t block_size, uint64_t out_size);
void podcap_merge_free(struct podcap_merge *m);
int podcap_merge_add(struct podcap_merge *m, int fd, uint32_t ts_scale, uint32_t divisor, uint32_t snaplen,
                     uint64_t start);
int podcap_merge_add_fed(struct podcap_merge *m, uint32_t ts_scale, uint32_t divisor, uint32_t snaplen,
                         uint64_t start);
int podcap_merge_feed(struct podcap_merge *m, uint32_t i, const uint8_t *data, uint64_t len);
int64_t podcap_merge_needed(const struct podcap_merge *m);
int podcap_merge_run(struct podcap_merge *m, uint64_t max_out);
void podcap_merge_counts(const struct podcap_merge *m, uint64_t *counts);
void podcap_merge_dropped(const struct podcap_merge *m, uint64_t *counts);
void podcap_merge_get_error(const struct podcap_merge *m, struct podcap_merge_error *out);
int podcap_merge_dedup(struct podcap_merge *m, uint64_t window_ns);
int podcap_merge_linktype(struct podcap_merge *m, uint32_t i, uint32_t linktype);

struct podcap_live *podcap_live_new(uint64_t dedup_window_ns);
void podcap_live_free(struct podcap_live *l);
int64_t podcap_live_add(struct podcap_live *l, uint32_t iface, uint32_t ts_scale, uint32_t divisor, uint32_t snaplen,
                        uint32_t linktype);
int podcap_live_push(struct podcap_live *l, uint32_t i, const uint8_t *rec, uint64_t len, uint64_t arrival,
                     struct podcap_merge_error *err);
uint64_t podcap_live_release(const struct podcap_live *l, uint64_t now, uint64_t hold);
int64_t podcap_live_pop(struct podcap_live *l, uint64_t until, uint8_t *out, uint64_t out_cap);
uint64_t podcap_live_buffered(const struct podcap_live *l);
void podcap_live_retire(struct podcap_live *l, uint32_t i);
void podcap_live_counts(const struct podcap_live *l, uint64_t *written, uint64_t *dropped);

/* Packet comments (a recorder's triggers): an annotation is written as an opt_comment on the first packet written at
 * or after its time (of input `input`, or of any input: PODCAP_MERGE_ANY_INPUT), added in time order. */
#define PODCAP_MERGE_ANY_INPUT UINT32_MAX
int podcap_merge_annotate(struct podcap_merge *m, uint64_t ts_ns, uint32_t input, const uint8_t *comment,
                          uint32_t len);
uint64_t podcap_merge_annotated(const struct podcap_merge *m);
int podcap_records_max_ts(int fd, uint32_t ts_scale, uint64_t start, uint64_t *max_ts);

/* One EPB through the inline writers above, for the test that holds it to the Python encoder: its size. The n
 * comments are concatenated in texts, lens[i] bytes each (opt_comment options in that order). */
uint64_t podcap_pcapng_epb(uint8_t *out, const uint8_t *data, uint32_t caplen, uint32_t wirelen, uint32_t iface,
                           uint64_t ts, const uint8_t *texts, const uint32_t *lens, uint32_t n);

#endif
