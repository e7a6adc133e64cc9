/*
 * The agent's per-packet path: a pcap_handler that appends each packet as a pcap record to a chunk buffer which
 * is, once sealed, the serialized podcap.v1.AgentMessage{chunk: PcapChunk} ready for gRPC.
 *
 * libpcap calls podcap_chunk_handler for every packet from inside pcap_dispatch (no Python per packet). The record
 * is what pcap_dump would write (32-bit seconds, 32-bit micro/nanoseconds, caplen, wire length, data), but copied
 * with two memcpy calls instead of two locked stdio fwrite calls. The buffer keeps PODCAP_CHUNK_PREFIX bytes in
 * front of each chunk's records; podcap_chunk_seal_head writes the chunk's other fields (encoded by protobuf in
 * Python, a few dozen bytes) behind them and fills the prefix with the two length-delimited headers
 * (AgentMessage.chunk, then PcapChunk.records), each length a 5-byte varint. Protobuf parsers accept such padded varints, so the records are
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

/*
 * Chunks are cut by bytes here, in the handler, whatever the packet mix: a record that would take the open chunk
 * past `limit` record bytes closes it first (a chunk holds at least one record, and libpcap never hands over more
 * than its snaplen, at most 262144 bytes). One pcap_dispatch may read far more than one chunk's worth (a ring full of
 * 64 KiB GSO frames after a run of small ACKs): the buffer then holds several chunks back to back, each laid out as
 * its own message - prefix, records, then PODCAP_FIELDS_ROOM bytes kept free for the fields podcap_chunk_seal_head
 * writes behind them - and the agent cuts them oldest first. Nothing depends on how many packets one dispatch
 * returns, so no message can outgrow the limit the collector declared.
 */
#define PODCAP_FIELDS_ROOM 1024 /* a PcapChunk's other fields: three ids of at most 64 bytes, counters, drops */

struct podcap_chunk_span { /* a chunk closed at the limit, waiting to be cut */
    uint64_t start;        /* offset of its prefix */
    uint64_t end;          /* end of its records (PODCAP_FIELDS_ROOM bytes follow) */
    uint64_t packets;
};

struct podcap_chunkbuf {
    uint8_t *data;    /* malloc'd; the closed chunks, then the open one */
    uint64_t len;     /* bytes in use */
    uint64_t cap;     /* bytes allocated */
    uint64_t packets; /* records of the open chunk */
    uint64_t lost;    /* packets not stored because the buffer could not grow (out of memory) */
    uint64_t limit;   /* record bytes per chunk at most; 0 = no limit */
    uint64_t start;   /* offset of the open chunk's prefix */
    uint64_t records; /* record bytes held, every chunk */
    uint64_t held;    /* records held, every chunk */
    struct podcap_chunk_span *spans; /* closed chunks: spans[head .. head + nclosed) */
    uint64_t head;
    uint64_t nclosed;
    uint64_t spans_cap;
};

int podcap_chunk_init(struct podcap_chunkbuf *b, uint64_t cap) {
    memset(b, 0, sizeof *b);
    if (cap < PODCAP_CHUNK_PREFIX) cap = PODCAP_CHUNK_PREFIX;
    b->data = malloc(cap);
    b->cap = b->data ? cap : 0;
    b->len = PODCAP_CHUNK_PREFIX;
    return b->data ? 0 : -1;
}

void podcap_chunk_free(struct podcap_chunkbuf *b) {
    free(b->data);
    free(b->spans);
    b->data = NULL;
    b->spans = NULL;
    b->cap = b->spans_cap = b->nclosed = b->head = b->start = b->records = b->held = b->packets = 0;
    b->len = PODCAP_CHUNK_PREFIX;
}

static int reserve(struct podcap_chunkbuf *b, uint64_t more) {
    if (b->data == NULL) return -1;
    if (b->len + more <= b->cap) return 0;
    if (b->nclosed == 0 && b->start > 0 && b->len - b->start + more <= b->cap) {
        /* Every closed chunk is cut: move the open one to the front now that room is needed. Done lazily, when the
         * end is reached, not after every cut: a bulk stream would otherwise move most of its bytes once more. */
        memmove(b->data, b->data + b->start, b->len - b->start);
        b->len -= b->start;
        b->start = 0;
        return 0;
    }
    uint64_t cap = b->cap * 2;
    if (cap < b->len + more) cap = b->len + more;
    uint8_t *grown = realloc(b->data, cap);
    if (grown == NULL) return -1;
    b->data = grown;
    b->cap = cap;
    return 0;
}

/* Close the open chunk (it has records): the next record starts a new one behind its fields' room. */
static int close_open(struct podcap_chunkbuf *b) {
    if (b->head + b->nclosed == b->spans_cap) {
        if (b->head > 0) { /* reuse the slots of chunks already cut */
            memmove(b->spans, b->spans + b->head, b->nclosed * sizeof *b->spans);
            b->head = 0;
        } else {
            uint64_t n = b->spans_cap ? 2 * b->spans_cap : 8;
            struct podcap_chunk_span *grown = realloc(b->spans, n * sizeof *grown);
            if (grown == NULL) return -1;
            b->spans = grown;
            b->spans_cap = n;
        }
    }
    if (reserve(b, PODCAP_FIELDS_ROOM + PODCAP_CHUNK_PREFIX) != 0) return -1;
    struct podcap_chunk_span *s = &b->spans[b->head + b->nclosed];
    s->start = b->start;
    s->end = b->len;
    s->packets = b->packets;
    b->nclosed++;
    b->len += PODCAP_FIELDS_ROOM;
    b->start = b->len;
    b->len += PODCAP_CHUNK_PREFIX;
    b->packets = 0;
    return 0;
}

void podcap_chunk_handler(unsigned char *user, const struct podcap_pkthdr *h, const unsigned char *bytes) {
    struct podcap_chunkbuf *b = (struct podcap_chunkbuf *)user;
    uint32_t hdr[4] = {(uint32_t)h->ts.tv_sec, (uint32_t)h->ts.tv_usec, h->caplen, h->len};
    uint64_t size = sizeof hdr + (uint64_t)h->caplen;
    if (b->limit && b->packets && b->len - b->start - PODCAP_CHUNK_PREFIX + size > b->limit &&
        close_open(b) != 0) {
        b->lost++;
        return;
    }
    if (reserve(b, size) != 0) {
        b->lost++;
        return;
    }
    memcpy(b->data + b->len, hdr, sizeof hdr);
    memcpy(b->data + b->len + sizeof hdr, bytes, h->caplen);
    b->len += size;
    b->packets++;
    b->records += size;
    b->held++;
}

static void varint5(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 4; i++) {
        p[i] = (uint8_t)(0x80 | (v & 0x7f));
        v >>= 7;
    }
    p[4] = (uint8_t)(v & 0x7f);
}

/* The oldest chunk held (the next to cut): its records' offset in data, their length and count. */
uint64_t podcap_chunk_head(const struct podcap_chunkbuf *b, uint64_t *offset, uint64_t *packets) {
    uint64_t start = b->nclosed ? b->spans[b->head].start : b->start;
    uint64_t end = b->nclosed ? b->spans[b->head].end : b->len;
    *offset = start + PODCAP_CHUNK_PREFIX;
    *packets = b->nclosed ? b->spans[b->head].packets : b->packets;
    return end - start - PODCAP_CHUNK_PREFIX;
}

/*
 * Write the oldest chunk's other fields (the encoded PcapChunk without records) behind its records and its prefix
 * (the two length-delimited headers, each length a 5-byte varint): data[*offset .. *offset + returned) is then the
 * whole serialized AgentMessage. Returns 0 when the fields do not fit or the buffer cannot grow.
 */
uint64_t podcap_chunk_seal_head(struct podcap_chunkbuf *b, const uint8_t *fields, uint64_t n, uint64_t *offset) {
    uint64_t start, end;
    if (b->nclosed) {
        start = b->spans[b->head].start;
        end = b->spans[b->head].end;
        if (n > PODCAP_FIELDS_ROOM) return 0;
    } else {
        if (reserve(b, n) != 0) return 0; /* first: it may move the open chunk to the front */
        start = b->start;
        end = b->len;
    }
    uint64_t records = end - start - PODCAP_CHUNK_PREFIX;
    uint64_t body = 6 + records + n; /* PcapChunk: records tag + varint5 + records + the other fields */
    if (body >= (1ull << 35)) return 0;
    memcpy(b->data + end, fields, n);
    b->data[start] = podcap_chunk_message_tag;
    varint5(b->data + start + 1, body);
    b->data[start + 6] = podcap_chunk_records_tag;
    varint5(b->data + start + 7, records);
    *offset = start;
    return PODCAP_CHUNK_PREFIX + records + n;
}

/* Forget the oldest chunk (cut, or discarded). The open chunk stays where it is (reserve moves it when room is
 * needed); an empty buffer starts again at the front. */
void podcap_chunk_pop_head(struct podcap_chunkbuf *b) {
    if (b->nclosed == 0) {
        b->records = b->held = 0;
        b->packets = 0;
        b->start = 0;
        b->len = PODCAP_CHUNK_PREFIX;
    } else {
        struct podcap_chunk_span *s = &b->spans[b->head];
        b->records -= s->end - s->start - PODCAP_CHUNK_PREFIX;
        b->held -= s->packets;
        b->head++;
        b->nclosed--;
        if (b->nclosed == 0) {
            b->head = 0;
            if (b->packets == 0) { /* the open chunk is empty */
                b->start = 0;
                b->len = PODCAP_CHUNK_PREFIX;
            }
        }
    }
}

/* Empty the buffer: every chunk held is discarded (its memory is kept). */
void podcap_chunk_reset(struct podcap_chunkbuf *b) {
    b->len = PODCAP_CHUNK_PREFIX;
    b->start = b->head = b->nclosed = 0;
    b->packets = b->records = b->held = 0;
}
