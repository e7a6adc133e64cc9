/*
 * The agent's per-packet path: a pcap_handler that appends each packet as a pcap record to a chunk buffer which
 * is, once sealed, the serialized podcap.v1.AgentMessage{chunk: PcapChunk} ready for gRPC.
 *
 * libpcap calls podcap_chunk_handler for every packet from inside pcap_dispatch (no Python per packet). The record
 * is what pcap_dump would write (32-bit seconds, 32-bit micro/nanoseconds, caplen, wire length, data), but copied
 * with two memcpy calls instead of two locked stdio fwrite calls. The buffer keeps PODCAP_CHUNK_PREFIX bytes in
 * front of the records; podcap_chunk_seal appends the chunk's other fields (encoded by protobuf in Python, a few
 * dozen bytes) and fills the prefix with the two length-delimited headers (AgentMessage.chunk, then
 * PcapChunk.records), each length a 5-byte varint. Protobuf parsers accept such padded varints, so the records are
 * never copied again before the socket: no copy into a protobuf message, none out of it.
 *
 * The field numbers are the contract's (proto/podcap/v1/ingest.proto); C cannot read the generated descriptors,
 * so they are written here and exported (podcap_chunk_message_tag, podcap_chunk_records_tag), and
 * tests/unit/test_framing.py checks them against the descriptors.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "records are written in host byte order, and podcap's pcap files are little-endian"
#endif

#define PODCAP_CHUNK_PREFIX 12
#define WIRE_LEN 2                   /* protobuf wire type of length-delimited fields */
#define AGENT_MESSAGE_CHUNK_FIELD 4  /* podcap.v1.AgentMessage.chunk */
#define PCAP_CHUNK_RECORDS_FIELD 4   /* podcap.v1.PcapChunk.records */
/* One byte each (field numbers below 16): the prefix's layout depends on it. */
#define TAG(field, wire) ((uint8_t)(((field) << 3) | (wire)))

const uint8_t podcap_chunk_message_tag = TAG(AGENT_MESSAGE_CHUNK_FIELD, WIRE_LEN);
const uint8_t podcap_chunk_records_tag = TAG(PCAP_CHUNK_RECORDS_FIELD, WIRE_LEN);

struct podcap_pkthdr { /* libpcap's struct pcap_pkthdr */
    struct timeval ts;
    uint32_t caplen;
    uint32_t len;
};

struct podcap_chunkbuf {
    uint8_t *data;    /* malloc'd; data[0:PREFIX) is the message prefix, records follow */
    uint64_t len;     /* bytes in use, prefix included */
    uint64_t cap;     /* bytes allocated */
    uint64_t packets; /* records since the last reset */
    uint64_t lost;    /* packets not stored because the buffer could not grow (out of memory) */
};

int podcap_chunk_init(struct podcap_chunkbuf *b, uint64_t cap) {
    if (cap < PODCAP_CHUNK_PREFIX) cap = PODCAP_CHUNK_PREFIX;
    b->data = malloc(cap);
    b->cap = b->data ? cap : 0;
    b->len = PODCAP_CHUNK_PREFIX;
    b->packets = 0;
    b->lost = 0;
    return b->data ? 0 : -1;
}

void podcap_chunk_free(struct podcap_chunkbuf *b) {
    free(b->data);
    b->data = NULL;
    b->cap = 0;
    b->len = PODCAP_CHUNK_PREFIX;
}

static int reserve(struct podcap_chunkbuf *b, uint64_t more) {
    if (b->data == NULL) return -1;
    if (b->len + more <= b->cap) return 0;
    uint64_t cap = b->cap * 2;
    if (cap < b->len + more) cap = b->len + more;
    uint8_t *grown = realloc(b->data, cap);
    if (grown == NULL) return -1;
    b->data = grown;
    b->cap = cap;
    return 0;
}

void podcap_chunk_handler(unsigned char *user, const struct podcap_pkthdr *h, const unsigned char *bytes) {
    struct podcap_chunkbuf *b = (struct podcap_chunkbuf *)user;
    uint32_t hdr[4] = {(uint32_t)h->ts.tv_sec, (uint32_t)h->ts.tv_usec, h->caplen, h->len};
    if (reserve(b, sizeof hdr + (uint64_t)h->caplen) != 0) {
        b->lost++;
        return;
    }
    memcpy(b->data + b->len, hdr, sizeof hdr);
    memcpy(b->data + b->len + sizeof hdr, bytes, h->caplen);
    b->len += sizeof hdr + (uint64_t)h->caplen;
    b->packets++;
}

static void varint5(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 4; i++) {
        p[i] = (uint8_t)(0x80 | (v & 0x7f));
        v >>= 7;
    }
    p[4] = (uint8_t)(v & 0x7f);
}

/*
 * Append the encoded other fields of the PcapChunk and write the prefix: data[0:len) is then the whole serialized
 * AgentMessage. Returns that length, or 0 when the buffer cannot grow or the records exceed what a 5-byte varint
 * holds (never for podcap's chunk sizes).
 */
uint64_t podcap_chunk_seal(struct podcap_chunkbuf *b, const uint8_t *fields, uint64_t n) {
    uint64_t records = b->len - PODCAP_CHUNK_PREFIX;
    uint64_t body = 6 + records + n; /* PcapChunk: records tag + varint5 + records + the other fields */
    if (body >= (1ull << 35) || reserve(b, n) != 0) return 0;
    memcpy(b->data + b->len, fields, n);
    b->len += n;
    b->data[0] = podcap_chunk_message_tag;
    varint5(b->data + 1, body);
    b->data[6] = podcap_chunk_records_tag;
    varint5(b->data + 7, records);
    return b->len;
}

/* Empty the buffer for the next chunk (its memory is kept). */
void podcap_chunk_reset(struct podcap_chunkbuf *b) {
    b->len = PODCAP_CHUNK_PREFIX;
    b->packets = 0;
}
