/*
 * The agent's per-packet path: a pcap_handler that appends each packet as a pcap record to a chunk buffer which
 * is, once sealed, the serialized podcap.v1.AgentMessage{chunk: PcapChunk} ready for gRPC.
 *
 * libpcap calls podcap_chunk_handler for every packet from inside pcap_dispatch (no Python per packet). The record
 * is what pcap_dump would write (32-bit seconds, 32-bit micro/nanoseconds, caplen, wire length, data), but copied
 * with two memcpy calls instead of two locked stdio fwrite calls. Each chunk's buffer keeps PODCAP_CHUNK_PREFIX bytes
 * in front of its records; podcap_chunk_take_head writes the chunk's other fields (encoded by protobuf in Python, a
 * few dozen bytes) behind them and fills the prefix with the two length-delimited headers (AgentMessage.chunk, then
 * PcapChunk.records), each length a 5-byte varint. Protobuf parsers accept such padded varints, so the records are
 * never copied again before the socket: no copy into a protobuf message, none out of it.
 *
 * The field numbers are the contract's (proto/podcap/v1/ingest.proto); C cannot read the generated descriptors,
 * so they are written here and exported (podcap_chunk_message_tag, podcap_chunk_records_tag), and
 * tests/unit/shared/test_framing.py checks them against the descriptors.
 *
 * This is podcap._native_chunks (podcap_native.h), loaded by podcap.agent.capture.chunkbuf, which mirrors struct
 * podcap_chunkbuf field for field.
 */
#include <stdlib.h>
#include <sys/time.h>

#include "podcap_native.h"

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
 * 64 KiB GSO frames after a run of small ACKs): the closed chunks then wait, oldest first, each in a buffer of its
 * own, laid out as its message (prefix, then records). Nothing depends on how many packets one dispatch returns, so
 * no message can outgrow the limit the collector declared.
 *
 * Each chunk's buffer is handed over whole when it is taken (podcap_chunk_take_head): the caller owns it and frees it
 * with podcap_chunk_release once it has made the bytes it sends of it - on the sending thread, not on the capture
 * thread, which so copies each byte once (out of the ring) and nothing more. A new chunk's buffer starts at the size
 * the last one reached, so a busy stream's buffers do not grow by copying and a quiet one's stay small.
 */
struct podcap_chunk {
    uint8_t *data;    /* malloc'd; data[0:PREFIX) is the message prefix, records follow */
    uint64_t len;     /* bytes in use, prefix included */
    uint64_t cap;     /* bytes allocated */
    uint64_t packets; /* records */
};

/*
 * A flight recorder's packet trigger: `count` packets matching a BPF program within `window_ns` (packet timestamps).
 * The program runs here, in the handler, on every packet (libpcap's pcap_offline_filter, reached through a function
 * pointer so this library need not link libpcap); the timestamps of the last `count` matches are kept in `ts` (a
 * circular array of `count` entries), and when the oldest of them is at most `window_ns` older than the newest the
 * trigger fires: `fired` counts up, `fired_ts_ns`/`first_ts_ns` say when, and the matches are consumed (the next
 * firing needs `count` new ones). The agent's loop reads `fired` once per wakeup: no Python per packet.
 */
typedef int (*podcap_bpf_match)(const void *prog, const struct podcap_pkthdr *h, const unsigned char *bytes);

struct podcap_trigger {
    podcap_bpf_match match; /* pcap_offline_filter */
    const void *prog;       /* struct bpf_program *, compiled for the handle's link type */
    uint64_t count;         /* matches needed, >= 1 */
    uint64_t window_ns;
    uint64_t ts_scale;      /* ns per unit of ts.tv_usec: 1 (nanosecond handle) or 1000 */
    int64_t *ts;            /* `count` entries */
    uint64_t n;             /* matches held in ts (<= count) */
    uint64_t pos;           /* where the next match goes */
    uint64_t total;         /* every match, ever */
    uint64_t fired;         /* firings, ever */
    int64_t fired_ts_ns;    /* the last firing: the match that completed it */
    int64_t first_ts_ns;    /* ... and the first of its `count` matches */
};

static void trigger_packet(struct podcap_trigger *t, const struct podcap_pkthdr *h, const unsigned char *bytes) {
    if (t->match(t->prog, h, bytes) == 0) return;
    int64_t now = (int64_t)h->ts.tv_sec * 1000000000ll + (int64_t)h->ts.tv_usec * (int64_t)t->ts_scale;
    t->total++;
    t->ts[t->pos] = now;
    t->pos = (t->pos + 1) % t->count;
    if (t->n < t->count) t->n++;
    if (t->n < t->count) return;
    int64_t oldest = t->ts[t->pos]; /* the slot written next holds the oldest of the last `count` */
    if (now - oldest <= (int64_t)t->window_ns) {
        t->fired++;
        t->fired_ts_ns = now;
        t->first_ts_ns = oldest;
        t->n = 0;
    }
}

struct podcap_chunkbuf {
    struct podcap_chunk open; /* where records go now */
    uint64_t lost;            /* packets not stored because a buffer could not grow (out of memory) */
    uint64_t limit;           /* record bytes per chunk at most; 0 = no limit */
    uint64_t records;         /* record bytes held, every chunk */
    uint64_t held;            /* records held, every chunk */
    struct podcap_chunk *closed; /* chunks closed at the limit: closed[head .. head + nclosed) */
    uint64_t head;
    uint64_t nclosed;
    uint64_t closed_cap;
    uint64_t initial; /* capacity a new chunk's buffer starts with */
    struct podcap_trigger *trigger; /* NULL: none (a capture; a recording without a packet trigger) */
};

static int chunk_new(struct podcap_chunk *c, uint64_t cap) {
    if (cap < PODCAP_CHUNK_PREFIX) cap = PODCAP_CHUNK_PREFIX;
    c->data = malloc(cap);
    if (c->data == NULL) return -1;
    c->cap = cap;
    c->len = PODCAP_CHUNK_PREFIX;
    c->packets = 0;
    return 0;
}

int podcap_chunk_init(struct podcap_chunkbuf *b, uint64_t cap) {
    memset(b, 0, sizeof *b);
    b->initial = cap;
    return chunk_new(&b->open, cap);
}

void podcap_chunk_free(struct podcap_chunkbuf *b) {
    free(b->open.data);
    for (uint64_t i = 0; i < b->nclosed; i++) free(b->closed[b->head + i].data);
    free(b->closed);
    memset(b, 0, sizeof *b);
}

static int reserve(struct podcap_chunk *c, uint64_t more) {
    if (c->data == NULL) return -1;
    if (c->len + more <= c->cap) return 0;
    uint64_t cap = c->cap * 2;
    if (cap < c->len + more) cap = c->len + more;
    uint8_t *grown = realloc(c->data, cap);
    if (grown == NULL) return -1;
    c->data = grown;
    c->cap = cap;
    return 0;
}

/* Close the open chunk (it has records); the next record starts a new one. */
static int close_open(struct podcap_chunkbuf *b) {
    if (b->head + b->nclosed == b->closed_cap) {
        if (b->head > 0) { /* reuse the slots of chunks already taken */
            memmove(b->closed, b->closed + b->head, b->nclosed * sizeof *b->closed);
            b->head = 0;
        } else {
            uint64_t n = b->closed_cap ? 2 * b->closed_cap : 8;
            struct podcap_chunk *grown = realloc(b->closed, n * sizeof *grown);
            if (grown == NULL) return -1;
            b->closed = grown;
            b->closed_cap = n;
        }
    }
    struct podcap_chunk next;
    if (chunk_new(&next, b->open.cap) != 0) return -1;
    b->closed[b->head + b->nclosed++] = b->open;
    b->open = next;
    return 0;
}

void podcap_chunk_handler(unsigned char *user, const struct podcap_pkthdr *h, const unsigned char *bytes) {
    struct podcap_chunkbuf *b = (struct podcap_chunkbuf *)user;
    if (b->trigger != NULL) trigger_packet(b->trigger, h, bytes);
    uint32_t hdr[4] = {(uint32_t)h->ts.tv_sec, (uint32_t)h->ts.tv_usec, h->caplen, h->len};
    uint64_t size = sizeof hdr + (uint64_t)h->caplen;
    struct podcap_chunk *c = &b->open;
    if (b->limit && c->packets && c->len - PODCAP_CHUNK_PREFIX + size > b->limit) {
        if (close_open(b) != 0) {
            b->lost++;
            return;
        }
        c = &b->open;
    }
    if (reserve(c, size) != 0) {
        b->lost++;
        return;
    }
    memcpy(c->data + c->len, hdr, sizeof hdr);
    memcpy(c->data + c->len + sizeof hdr, bytes, h->caplen);
    c->len += size;
    c->packets++;
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

static struct podcap_chunk *head(struct podcap_chunkbuf *b) {
    return b->nclosed ? &b->closed[b->head] : &b->open;
}

/* The oldest chunk held (the next to take): its records' length and count, and their first 16 bytes (its first
 * record's header) copied to `first` when it has any. */
uint64_t podcap_chunk_head(struct podcap_chunkbuf *b, uint64_t *packets, uint8_t *first) {
    struct podcap_chunk *c = head(b);
    uint64_t records = c->len - PODCAP_CHUNK_PREFIX;
    *packets = c->packets;
    if (records >= 16 && c->data != NULL) memcpy(first, c->data + PODCAP_CHUNK_PREFIX, 16);
    return records;
}

/*
 * Take the oldest chunk: its other fields (the encoded PcapChunk without records) are written behind its records and
 * its prefix (the two length-delimited headers, each length a 5-byte varint) in front, so that *data[0 .. returned)
 * is the whole serialized AgentMessage. The caller owns *data from then on (podcap_chunk_release). Returns 0, and
 * keeps the chunk, when memory is short.
 */
uint64_t podcap_chunk_take_head(struct podcap_chunkbuf *b, const uint8_t *fields, uint64_t n, uint8_t **data) {
    struct podcap_chunk *c = head(b);
    uint64_t records = c->len - PODCAP_CHUNK_PREFIX;
    uint64_t body = 6 + records + n; /* PcapChunk: records tag + varint5 + records + the other fields */
    if (body >= (1ull << 35) || reserve(c, n) != 0) return 0;
    struct podcap_chunk next = {0};
    if (b->nclosed == 0 && chunk_new(&next, b->initial) != 0) return 0; /* the open chunk's successor */
    memcpy(c->data + c->len, fields, n);
    c->data[0] = podcap_chunk_message_tag;
    varint5(c->data + 1, body);
    c->data[6] = podcap_chunk_records_tag;
    varint5(c->data + 7, records);
    uint64_t total = c->len + n;
    /* The next chunk starts at this one's size: a busy stream's buffers do not grow by copying. */
    b->initial = c->cap > 64 * 1024 ? c->cap : 64 * 1024;
    *data = c->data;
    if (c->cap > 2 * total) { /* a small chunk in a large buffer: give the rest back while it waits to be sent */
        uint8_t *shrunk = realloc(c->data, total);
        if (shrunk != NULL) *data = shrunk;
    }
    b->records -= records;
    b->held -= c->packets;
    if (b->nclosed) {
        b->head++;
        if (--b->nclosed == 0) b->head = 0;
    } else {
        b->open = next;
    }
    return total;
}

/* Free a buffer podcap_chunk_take_head handed over. */
void podcap_chunk_release(uint8_t *data) {
    free(data);
}

/* Empty the buffer: every chunk held is discarded (the open chunk's memory is kept). */
void podcap_chunk_reset(struct podcap_chunkbuf *b) {
    for (uint64_t i = 0; i < b->nclosed; i++) free(b->closed[b->head + i].data);
    b->head = b->nclosed = 0;
    b->open.len = PODCAP_CHUNK_PREFIX;
    b->open.packets = 0;
    b->records = b->held = 0;
}
