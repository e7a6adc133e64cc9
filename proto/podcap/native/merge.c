/*
 * The merge core (podcap._native_merge): per-pod pcap records (files, or download streams) merged by timestamp into
 * pcapng Enhanced Packet Blocks, in C so that no Python runs per packet (`podcap get --merge FILE`, `--merge -`,
 * `--format pcapng`).
 *
 * Python (podcap.collector.cli.get.pcapmerge) writes the Section Header and one Interface Description Block per input,
 * flushes, and hands this code the output descriptor and each input's descriptor with its format; this code then
 * writes every record as an EPB (interface = the input's index, timestamp in the IDB's resolution) and Python adds
 * the Interface Statistics Blocks afterwards. The result is byte for byte what the Python writer
 * (podcap.formats.pcapng.PcapngWriter fed by heapq.merge) produces, and tests hold the two to it.
 *
 * Order: a streaming k-way merge with a binary heap of the inputs' next records: the earliest first, and of equal
 * timestamps the one from the later input (mergecap's rule: its is_earlier() holds on equality, so the last input
 * holding the earliest time wins). Each input's own order is kept even where it is not time-ordered (a clock step
 * on a node). That is mergecap's order exactly, and tests compare the two. Memory is bounded whatever the capture
 * size: one read buffer per input (block_size, grown only for a record longer than that, which must fit in its
 * file) and one output buffer. Records are checked as podcap.formats.pcap checks them (caplen within snaplen and wire
 * length, no truncation); a bad one stops the merge with the input, the file offset and what was wrong.
 *
 * An input is either a file (podcap_merge_add: read here with pread) or fed (podcap_merge_add_fed: its bytes come
 * from Python, e.g. one pod's Download stream, so that a merge needs no file at all). When a fed input runs dry,
 * podcap_merge_run returns PODCAP_MERGE_NEED and podcap_merge_needed names it; Python feeds it its next block
 * (podcap_merge_feed; an empty block is its end) and calls podcap_merge_run again. A fed input holds what is left
 * of its last block plus the new one, so memory stays bounded by the blocks' size there too.
 *
 * podcap_merge_run also returns after about max_out bytes of output so that Python can take signals (Ctrl+C)
 * during a merge of many gigabytes; ctypes releases the GIL during each call.
 *
 * One copy per packet (podcap_merge_dedup, podcap_live_new with a window): a packet between two captured pods is
 * seen on both pods' interfaces. A merged or live view across pods can leave out the second sighting: a packet
 * whose IP packet (from the IP header on, the TTL or hop limit and the header checksum read as zero, since a
 * router between the pods changes them; the link-layer header left out, since it differs) was written from
 * another input within the window before it is dropped and counted for its input. A packet seen again on the
 * same input is never dropped (it is a real second packet: a retransmission, a loop), and what is not IP (ARP) is
 * always kept. Like `editcap -d`, but across interfaces only, and by time window. The decision is on a 64-bit
 * hash of those bytes; the Python twin (podcap.collector.cli.dedup) compares the bytes themselves and so takes the
 * same decisions (but for hash collisions, one in 2^64).
 *
 * The live view (podcap_live_*): the records of a capture's Follow stream, one message of one pod at a time,
 * written as EPBs in time order across pods. Each pod's records are held until no pod can still deliver an earlier
 * one: records up to the oldest "latest timestamp" of the pods that delivered any (every pod's own records come in
 * order), or, for a pod that went quiet, up to what arrived `hold` ago (an agent sends a pod's chunk at the latest
 * 2 s after its first packet). See podcap.collector.cli.live.order.
 *
 * Packet comments (podcap_merge_annotate: a recorder's triggers, issue 24): annotations in time order, each an
 * opt_comment on the first packet written at or after its time, of its input or of any. A packet pays one compare
 * against the next annotation's time (UINT64_MAX when there is none); only a packet at or after it looks further.
 * Annotations of one packet are its options in the order they were added. Such a packet is written even when it is a
 * second sighting (one copy per packet), so that the comment stays at its time. Whether a packet follows an
 * annotation at all is known before the merge (podcap_records_max_ts), so that the section header can say which
 * triggers are only section comments.
 *
 * The records are checked and the EPBs written by the definitions in podcap_native.h; the error codes are its
 * enum podcap_error.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "podcap_native.h"

#define LINKTYPE_ETHERNET 1u
#define LINKTYPE_RAW 101u
#define LINKTYPE_LINUX_SLL 113u
#define LINKTYPE_IPV4 228u
#define LINKTYPE_IPV6 229u
#define LINKTYPE_LINUX_SLL2 276u

struct input {
    int fd; /* -1: fed by podcap_merge_feed */
    uint32_t iface, ts_scale, divisor, snaplen;
    uint64_t file_size;
    uint64_t next_read; /* file offset of the next byte to read */
    uint64_t buf_off;   /* file offset of buf[0] */
    uint8_t *buf;
    size_t cap, pos, len; /* buf[pos:len) holds data not yet merged */
    int eof;
    uint64_t head_ts; /* of the record at buf[pos], valid while it is in the heap */
    uint64_t packets;
    uint32_t linktype; /* for one copy per packet (podcap_merge_linktype) */
    uint64_t dropped;  /* second sightings left out */
};

struct podcap_dedup;

struct podcap_merge {
    size_t n, added;
    struct input *in;
    uint32_t *heap; /* input indexes, smallest (head_ts, index) first */
    size_t heap_len;
    size_t loaded;   /* inputs whose first record was looked for (the heap is built input by input) */
    int top_pending; /* the heap top's record was written and its next one is not loaded yet */
    int64_t need;    /* the fed input that ran dry, -1 if none */
    int out_fd;
    uint8_t *out;
    size_t out_cap, out_len;
    uint64_t flushed; /* bytes written to out_fd so far */
    size_t block_size;
    struct podcap_dedup *dedup; /* NULL: every record is written */
    struct podcap_merge_error err;
    /* Packet comments (podcap_merge_annotate), in time order; a written one is placed. */
    struct annotation *ann;
    size_t ann_n, ann_cap, ann_first; /* ann[0:ann_first) are all placed */
    uint8_t *ann_text;                /* their texts, one after another */
    size_t text_len, text_cap;
    uint64_t next_ann_ts; /* time of ann[ann_first]; UINT64_MAX when none is left: one compare per packet */
    uint64_t annotated;   /* annotations placed */
};

struct annotation {
    uint64_t ts;
    uint32_t input; /* PODCAP_MERGE_ANY_INPUT: the first packet of any input */
    uint32_t len;
    size_t off; /* in ann_text */
    int placed;
};

static void dedup_free(struct podcap_dedup *d);
static int dedup_drop(struct podcap_dedup *d, uint32_t linktype, const uint8_t *data, uint32_t incl, uint32_t orig,
                      uint64_t ts, uint32_t iface);

static int fail(struct podcap_merge *m, int code, size_t i, uint64_t offset) {
    m->err.code = code;
    m->err.input = i;
    m->err.offset = offset;
    return -code;
}

struct podcap_merge *podcap_merge_new(uint32_t n_inputs, int out_fd, uint64_t block_size, uint64_t out_size) {
    struct podcap_merge *m = calloc(1, sizeof(*m));
    if (!m) return NULL;
    m->n = n_inputs;
    m->need = -1;
    m->next_ann_ts = UINT64_MAX;
    m->out_fd = out_fd;
    m->block_size = block_size < 4096 ? 4096 : (size_t)block_size;
    m->out_cap = out_size < 4096 ? 4096 : (size_t)out_size;
    m->in = calloc(n_inputs ? n_inputs : 1, sizeof(*m->in));
    m->heap = calloc(n_inputs ? n_inputs : 1, sizeof(*m->heap));
    m->out = malloc(m->out_cap);
    if (!m->in || !m->heap || !m->out) {
        free(m->in);
        free(m->heap);
        free(m->out);
        free(m);
        return NULL;
    }
    return m;
}

void podcap_merge_free(struct podcap_merge *m) {
    if (!m) return;
    dedup_free(m->dedup);
    free(m->ann);
    free(m->ann_text);
    for (size_t i = 0; i < m->added; i++) free(m->in[i].buf);
    free(m->in);
    free(m->heap);
    free(m->out);
    free(m);
}

/* The next input: fd (-1 when fed), its format, where its first record starts and how long its file is. */
static int add_input(struct podcap_merge *m, int fd, uint32_t ts_scale, uint32_t divisor, uint32_t snaplen,
                     uint64_t start, uint64_t file_size) {
    struct input *in = &m->in[m->added];
    in->fd = fd;
    in->iface = (uint32_t)m->added;
    in->ts_scale = ts_scale;
    in->divisor = divisor ? divisor : 1;
    in->snaplen = snaplen;
    in->file_size = file_size;
    in->next_read = in->buf_off = start;
    in->cap = m->block_size;
    in->buf = malloc(in->cap);
    if (!in->buf) return fail(m, PODCAP_NO_MEMORY, m->added, start);
    m->added++;
    return 0;
}

/* Input number `added`: records from file offset `start` (just past the file header) to the end of the file. The
 * descriptor stays the caller's (read with pread, so its position does not matter). */
int podcap_merge_add(struct podcap_merge *m, int fd, uint32_t ts_scale, uint32_t divisor, uint32_t snaplen,
                     uint64_t start) {
    if (m->added >= m->n) return -1;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        m->err.errno_value = errno;
        return fail(m, PODCAP_READ_ERROR, m->added, start);
    }
    return add_input(m, fd, ts_scale, divisor, snaplen, start, (uint64_t)st.st_size);
}

/* Input number `added`, fed by podcap_merge_feed; `start` is the stream offset of its first record (error offsets
 * count from there as in a file). */
int podcap_merge_add_fed(struct podcap_merge *m, uint32_t ts_scale, uint32_t divisor, uint32_t snaplen,
                         uint64_t start) {
    if (m->added >= m->n) return -1;
    return add_input(m, -1, ts_scale, divisor, snaplen, start, UINT64_MAX);
}

/* The next block of fed input i (len 0: the input ended). */
/* Move what is left unread to the front of the input's buffer (its file offset follows). */
static void compact(struct input *in) {
    if (!in->pos) return;
    size_t rest = in->len - in->pos;
    memmove(in->buf, in->buf + in->pos, rest);
    in->buf_off += in->pos;
    in->pos = 0;
    in->len = rest;
}

int podcap_merge_feed(struct podcap_merge *m, uint32_t i, const uint8_t *data, uint64_t len) {
    if (i >= m->added || m->in[i].fd >= 0) return -1;
    struct input *in = &m->in[i];
    if (len == 0) {
        in->eof = 1;
        return 0;
    }
    compact(in);
    if (in->cap - in->len < len) {
        uint8_t *grown = realloc(in->buf, in->len + (size_t)len);
        if (!grown) return fail(m, PODCAP_NO_MEMORY, i, in->buf_off);
        in->buf = grown;
        in->cap = in->len + (size_t)len;
    }
    memcpy(in->buf + in->len, data, (size_t)len);
    in->len += (size_t)len;
    in->next_read += len;
    return 0;
}

int64_t podcap_merge_needed(const struct podcap_merge *m) { return m->need; }

/* Move what is left to the front and read more (one pread). */
static int refill(struct podcap_merge *m, size_t i) {
    struct input *in = &m->in[i];
    compact(in);
    for (;;) {
        ssize_t r = pread(in->fd, in->buf + in->len, in->cap - in->len, (off_t)in->next_read);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            m->err.errno_value = errno;
            return fail(m, PODCAP_READ_ERROR, i, in->next_read);
        }
        if (r == 0) in->eof = 1;
        in->len += (size_t)r;
        in->next_read += (uint64_t)r;
        return 0;
    }
}

/* Make the input's next whole record available at buf[pos]: 1 when it is, 0 at the end, PODCAP_MERGE_NEED when a
 * fed input needs more, < 0 on an error. */
static int load_head(struct podcap_merge *m, size_t i) {
    struct input *in = &m->in[i];
    for (;;) {
        size_t avail = in->len - in->pos;
        uint64_t rec_off = in->buf_off + in->pos;
        if (avail >= PODCAP_RECORD_HEADER) {
            const uint8_t *h = in->buf + in->pos;
            uint32_t incl = podcap_record_caplen(h);
            if (podcap_record_header_check(h, in->snaplen) != PODCAP_OK) {
                m->err.caplen = incl;
                m->err.wirelen = podcap_record_wirelen(h);
                return fail(m, PODCAP_BAD_CAPLEN, i, rec_off);
            }
            size_t need = PODCAP_RECORD_HEADER + (size_t)incl;
            if (avail >= need) {
                in->head_ts = podcap_record_ts_ns(h, in->ts_scale);
                return 1;
            }
            if ((in->fd >= 0 && rec_off + need > in->file_size) || in->eof) {
                m->err.caplen = incl;
                m->err.left = in->fd >= 0 && in->file_size > rec_off + avail ? in->file_size - rec_off : avail;
                return fail(m, PODCAP_TRUNCATED_RECORD, i, rec_off);
            }
            if (in->fd >= 0 && need > in->cap) { /* longer than the block: it is in the file, so it fits */
                uint8_t *grown = realloc(in->buf, need);
                if (!grown) return fail(m, PODCAP_NO_MEMORY, i, rec_off);
                in->buf = grown;
                in->cap = need;
            }
        } else if (in->eof) {
            if (avail == 0) return 0;
            m->err.left = avail;
            return fail(m, PODCAP_TRUNCATED_HEADER, i, rec_off);
        }
        if (in->fd < 0) return PODCAP_MERGE_NEED;
        int rc = refill(m, i);
        if (rc < 0) return rc;
    }
}

static inline int before(const struct podcap_merge *m, uint32_t a, uint32_t b) {
    uint64_t ta = m->in[a].head_ts, tb = m->in[b].head_ts;
    return ta < tb || (ta == tb && a > b); /* a tie goes to the later input, as in mergecap */
}

static void sift_down(struct podcap_merge *m, size_t k) {
    uint32_t *h = m->heap;
    size_t n = m->heap_len;
    uint32_t v = h[k];
    for (;;) {
        size_t c = 2 * k + 1;
        if (c >= n) break;
        if (c + 1 < n && before(m, h[c + 1], h[c])) c++;
        if (!before(m, h[c], v)) break;
        h[k] = h[c];
        k = c;
    }
    h[k] = v;
}

static void sift_up(struct podcap_merge *m, size_t k) {
    uint32_t *h = m->heap;
    uint32_t v = h[k];
    while (k > 0) {
        size_t p = (k - 1) / 2;
        if (!before(m, v, h[p])) break;
        h[k] = h[p];
        k = p;
    }
    h[k] = v;
}

static int flush_out(struct podcap_merge *m) {
    size_t done = 0;
    while (done < m->out_len) {
        ssize_t w = write(m->out_fd, m->out + done, m->out_len - done);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) {
            m->err.errno_value = errno;
            m->out_len = 0;
            return fail(m, PODCAP_WRITE_ERROR, 0, 0);
        }
        done += (size_t)w;
    }
    m->flushed += m->out_len;
    m->out_len = 0;
    return 0;
}

uint64_t podcap_pcapng_epb(uint8_t *out, const uint8_t *data, uint32_t caplen, uint32_t wirelen, uint32_t iface,
                           uint64_t ts, const uint8_t *texts, const uint32_t *lens, uint32_t n) {
    uint32_t opts = 0;
    for (uint32_t i = 0; i < n; i++) opts += (uint32_t)podcap_opt_comment_size(lens[i]);
    if (n) opts += 4;
    podcap_epb_write_opts(out, data, caplen, wirelen, iface, ts, opts);
    uint8_t *p = out + podcap_epb_size(caplen) - 4;
    for (uint32_t i = 0; i < n; i++) {
        p += podcap_opt_comment_write(p, texts, lens[i]);
        texts += lens[i];
    }
    if (n) podcap_opt_end_write(p);
    return podcap_epb_size(caplen) + opts;
}

/* The next annotation: on the first packet written at or after ts_ns, of input `input` or of any. In time order
 * (an earlier time than the last one added: -1). */
int podcap_merge_annotate(struct podcap_merge *m, uint64_t ts_ns, uint32_t input, const uint8_t *comment,
                          uint32_t len) {
    if (len > 0xFFFFu || (m->ann_n && ts_ns < m->ann[m->ann_n - 1].ts)) return -1;
    if (m->ann_n == m->ann_cap) {
        size_t cap = m->ann_cap ? 2 * m->ann_cap : 8;
        struct annotation *a = realloc(m->ann, cap * sizeof(*a));
        if (!a) return fail(m, PODCAP_NO_MEMORY, 0, 0);
        m->ann = a;
        m->ann_cap = cap;
    }
    if (m->text_cap - m->text_len < len) {
        size_t cap = m->text_cap ? m->text_cap : 256;
        while (cap - m->text_len < len) cap *= 2;
        uint8_t *t = realloc(m->ann_text, cap);
        if (!t) return fail(m, PODCAP_NO_MEMORY, 0, 0);
        m->ann_text = t;
        m->text_cap = cap;
    }
    if (len) memcpy(m->ann_text + m->text_len, comment, len);
    m->ann[m->ann_n++] = (struct annotation){ts_ns, input, len, m->text_len, 0};
    m->text_len += len;
    m->next_ann_ts = m->ann[m->ann_first].ts;
    return 0;
}

/* Annotations placed so far. */
uint64_t podcap_merge_annotated(const struct podcap_merge *m) { return m->annotated; }

static inline int annotation_due(const struct annotation *a, uint64_t ts, uint32_t iface) {
    return !a->placed && a->ts <= ts && (a->input == PODCAP_MERGE_ANY_INPUT || a->input == iface);
}

/* The bytes of the options the next record of `in` carries: its annotations that are due, then opt_endofopt; 0 when
 * none is (an earlier annotation for another input may still wait for that input's next packet). */
static uint32_t annotation_opts(const struct podcap_merge *m, const struct input *in) {
    uint32_t opts = 0;
    for (size_t k = m->ann_first; k < m->ann_n && m->ann[k].ts <= in->head_ts; k++)
        if (annotation_due(&m->ann[k], in->head_ts, in->iface))
            opts += (uint32_t)podcap_opt_comment_size(m->ann[k].len);
    return opts ? opts + 4 : 0;
}

/* Write the due annotations at o (annotation_opts' bytes) and mark them placed. */
static void annotation_write(struct podcap_merge *m, const struct input *in, uint8_t *o) {
    for (size_t k = m->ann_first; k < m->ann_n && m->ann[k].ts <= in->head_ts; k++) {
        struct annotation *a = &m->ann[k];
        if (!annotation_due(a, in->head_ts, in->iface)) continue;
        o += podcap_opt_comment_write(o, m->ann_text + a->off, a->len);
        a->placed = 1;
        m->annotated++;
    }
    podcap_opt_end_write(o);
    while (m->ann_first < m->ann_n && m->ann[m->ann_first].placed) m->ann_first++;
    m->next_ann_ts = m->ann_first < m->ann_n ? m->ann[m->ann_first].ts : UINT64_MAX;
}

/* Room for `total` more bytes in an output buffer that has less: flushed, and grown for a record larger than it. */
static int out_room(struct podcap_merge *m, size_t total, const struct input *in) {
    int rc = flush_out(m);
    if (rc < 0) return rc;
    if (total > m->out_cap) {
        uint8_t *grown = realloc(m->out, total);
        if (!grown) return fail(m, PODCAP_NO_MEMORY, (size_t)in->iface, in->buf_off + in->pos);
        m->out = grown;
        m->out_cap = total;
    }
    return 0;
}

/* The record at the input's head as an EPB without options, or left out (a second sighting). */
static inline __attribute__((always_inline)) int emit_plain(struct podcap_merge *m, struct input *in) {
    const uint8_t *rec = in->buf + in->pos;
    uint32_t incl = podcap_record_caplen(rec), orig = podcap_record_wirelen(rec);
    const uint8_t *data = rec + PODCAP_RECORD_HEADER;
    if (m->dedup && dedup_drop(m->dedup, in->linktype, data, incl, orig, in->head_ts, in->iface)) {
        in->pos += PODCAP_RECORD_HEADER + (size_t)incl;
        in->dropped++;
        return 0;
    }
    size_t total = podcap_epb_size(incl);
    if (m->out_cap - m->out_len < total) {
        int rc = out_room(m, total, in);
        if (rc < 0) return rc;
    }
    podcap_epb_write(m->out + m->out_len, data, incl, orig, in->iface, in->head_ts / in->divisor);
    m->out_len += total;
    in->pos += PODCAP_RECORD_HEADER + (size_t)incl;
    in->packets++;
    return 0;
}

/* A record at or after the next annotation's time: an EPB with the annotations due on it, as options; when none is
 * (one for another input may be waiting), the plain EPB. Such a record is written even when it is a second sighting
 * (the comment stays at its time); it is still seen by the one-copy table, as any written packet. Out of line, so
 * that the per-packet path stays what it was without annotations. */
static __attribute__((noinline, cold)) int emit_annotated(struct podcap_merge *m, struct input *in) {
    uint32_t opts = annotation_opts(m, in);
    if (!opts) return emit_plain(m, in);
    const uint8_t *rec = in->buf + in->pos;
    uint32_t incl = podcap_record_caplen(rec), orig = podcap_record_wirelen(rec);
    const uint8_t *data = rec + PODCAP_RECORD_HEADER;
    if (m->dedup) (void)dedup_drop(m->dedup, in->linktype, data, incl, orig, in->head_ts, in->iface);
    size_t total = podcap_epb_size(incl) + opts;
    if (m->out_cap - m->out_len < total) {
        int rc = out_room(m, total, in);
        if (rc < 0) return rc;
    }
    uint8_t *o = m->out + m->out_len;
    podcap_epb_write_opts(o, data, incl, orig, in->iface, in->head_ts / in->divisor, opts);
    annotation_write(m, in, o + podcap_epb_size(incl) - 4);
    m->out_len += total;
    in->pos += PODCAP_RECORD_HEADER + (size_t)incl;
    in->packets++;
    return 0;
}

static int emit(struct podcap_merge *m, struct input *in) {
    if (__builtin_expect(in->head_ts >= m->next_ann_ts, 0)) return emit_annotated(m, in); /* the one compare */
    return emit_plain(m, in);
}

/* The latest record timestamp (ns) of a pcap file from offset start on, into *max_ts (0: no record): whether a
 * packet follows a time, known before the merge writes the section header that says so. Stops quietly at a
 * malformed end (the merge reports it). 0, or -PODCAP_READ_ERROR / -PODCAP_NO_MEMORY. */
int podcap_records_max_ts(int fd, uint32_t ts_scale, uint64_t start, uint64_t *max_ts) {
    enum { SCAN_BLOCK = 1 << 20 };
    uint8_t *buf = malloc(SCAN_BLOCK);
    if (!buf) return -PODCAP_NO_MEMORY;
    uint64_t off = start, buf_off = 0, buf_len = 0, latest = 0;
    for (;;) {
        if (off < buf_off || off + PODCAP_RECORD_HEADER > buf_off + buf_len) {
            ssize_t r = pread(fd, buf, SCAN_BLOCK, (off_t)off);
            if (r < 0 && errno == EINTR) continue;
            if (r < 0) {
                free(buf);
                return -PODCAP_READ_ERROR;
            }
            buf_off = off;
            buf_len = (uint64_t)r;
            if (buf_len < PODCAP_RECORD_HEADER) break;
        }
        const uint8_t *h = buf + (off - buf_off);
        uint64_t ts = podcap_record_ts_ns(h, ts_scale);
        if (ts > latest) latest = ts;
        off += PODCAP_RECORD_HEADER + (uint64_t)podcap_record_caplen(h);
    }
    free(buf);
    *max_ts = latest;
    return 0;
}

/*
 * Merge until about max_out bytes were written (then 1: call again), or to the end (0: every record written and
 * the output flushed). < 0: an error, described by podcap_merge_error.
 */
int podcap_merge_run(struct podcap_merge *m, uint64_t max_out) {
    if (m->err.code) return -m->err.code;
    m->need = -1;
    while (m->loaded < m->added) { /* the first record of every input, into the heap */
        size_t i = m->loaded;
        int rc = load_head(m, i);
        if (rc == PODCAP_MERGE_NEED) {
            m->need = (int64_t)i;
            return PODCAP_MERGE_NEED;
        }
        if (rc < 0) return rc;
        if (rc == 1) {
            m->heap[m->heap_len++] = (uint32_t)i;
            sift_up(m, m->heap_len - 1);
        }
        m->loaded++;
    }
    uint64_t first = m->flushed;
    for (;;) {
        if (m->top_pending) { /* the top's next record, then its place in the heap */
            uint32_t i = m->heap[0];
            int rc = load_head(m, i);
            if (rc == PODCAP_MERGE_NEED) {
                m->need = i;
                return PODCAP_MERGE_NEED;
            }
            if (rc < 0) return rc;
            if (rc == 0) m->heap[0] = m->heap[--m->heap_len];
            if (m->heap_len > 1) sift_down(m, 0);
            m->top_pending = 0;
        }
        if (!m->heap_len) break;
        if (max_out && m->flushed - first >= max_out) return PODCAP_MERGE_MORE;
        int rc = emit(m, &m->in[m->heap[0]]);
        if (rc < 0) return rc;
        m->top_pending = 1;
    }
    int rc = flush_out(m);
    return rc < 0 ? rc : 0;
}

void podcap_merge_counts(const struct podcap_merge *m, uint64_t *counts) {
    for (size_t i = 0; i < m->added; i++) counts[i] = m->in[i].packets;
}

/* Second sightings left out per input (with podcap_merge_dedup). */
void podcap_merge_dropped(const struct podcap_merge *m, uint64_t *counts) {
    for (size_t i = 0; i < m->added; i++) counts[i] = m->in[i].dropped;
}

void podcap_merge_get_error(const struct podcap_merge *m, struct podcap_merge_error *out) { *out = m->err; }

/* ---- one copy per packet across inputs ---- */

struct dedup_entry {
    uint64_t key, ts;
    uint32_t iface, used;
};

struct dedup_table {
    struct dedup_entry *e;
    size_t cap, n; /* cap: a power of two */
    uint64_t since; /* timestamp of the table's first entry */
};

struct podcap_dedup {
    uint64_t window;
    struct dedup_table cur, old; /* entries of the current window, and of the one before */
};

#define DEDUP_MIN_CAP 4096u

static struct podcap_dedup *dedup_new(uint64_t window) {
    struct podcap_dedup *d = calloc(1, sizeof(*d));
    if (!d) return NULL;
    d->window = window;
    d->cur.cap = d->old.cap = DEDUP_MIN_CAP;
    d->cur.e = calloc(DEDUP_MIN_CAP, sizeof(struct dedup_entry));
    d->old.e = calloc(DEDUP_MIN_CAP, sizeof(struct dedup_entry));
    if (!d->cur.e || !d->old.e) {
        dedup_free(d);
        return NULL;
    }
    return d;
}

static void dedup_free(struct podcap_dedup *d) {
    if (!d) return;
    free(d->cur.e);
    free(d->old.e);
    free(d);
}

/* Where the IP header starts in a frame of this link type, or -1 (not IP, or too short to tell). */
static long ip_offset(uint32_t linktype, const uint8_t *d, uint32_t incl) {
    uint32_t off, proto;
    switch (linktype) {
    case LINKTYPE_ETHERNET:
        if (incl < 14) return -1;
        off = 12;
        proto = (uint32_t)d[off] << 8 | d[off + 1];
        while ((proto == 0x8100 || proto == 0x88a8) && off + 6 <= incl) { /* VLAN tags */
            off += 4;
            proto = (uint32_t)d[off] << 8 | d[off + 1];
        }
        off += 2;
        break;
    case LINKTYPE_LINUX_SLL:
        if (incl < 16) return -1;
        proto = (uint32_t)d[14] << 8 | d[15];
        off = 16;
        break;
    case LINKTYPE_LINUX_SLL2:
        if (incl < 20) return -1;
        proto = (uint32_t)d[0] << 8 | d[1];
        off = 20;
        break;
    case LINKTYPE_RAW:
    case LINKTYPE_IPV4:
    case LINKTYPE_IPV6:
        return incl ? 0 : -1;
    default:
        return -1;
    }
    return proto == 0x0800 || proto == 0x86dd ? (long)off : -1;
}

static inline uint64_t mix(uint64_t h, uint64_t v) {
    h ^= v * 0x9e3779b97f4a7c15ull;
    h = (h ^ (h >> 29)) * 0xbf58476d1ce4e5b9ull;
    return h ^ (h >> 32);
}

static uint64_t hash_bytes(uint64_t h, const uint8_t *p, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v;
        memcpy(&v, p + i, 8);
        h = mix(h, v);
    }
    uint64_t tail = 0;
    memcpy(&tail, p + i, n - i);
    return mix(h, tail ^ (uint64_t)(n - i) << 56);
}

/* The packet's key: a hash of its IP packet (TTL/hop limit and IPv4 header checksum as zero) and IP length; 0 for
 * what is not IP. */
static uint64_t packet_key(uint32_t linktype, const uint8_t *d, uint32_t incl, uint32_t orig) {
    long at = ip_offset(linktype, d, incl);
    if (at < 0) return 0;
    const uint8_t *ip = d + at;
    size_t n = incl - (size_t)at;
    uint8_t head[40];
    size_t fixed;
    if (n >= 20 && ip[0] >> 4 == 4) {
        fixed = 20;
        memcpy(head, ip, fixed);
        head[8] = 0;            /* TTL */
        head[10] = head[11] = 0; /* header checksum */
    } else if (n >= 40 && ip[0] >> 4 == 6) {
        fixed = 40;
        memcpy(head, ip, fixed);
        head[7] = 0; /* hop limit */
    } else {
        return 0;
    }
    uint64_t h = mix(0x51ed270b27a1f4c5ull, (uint64_t)(orig - (uint32_t)at) << 32 | (uint64_t)n);
    h = hash_bytes(h, head, fixed);
    h = hash_bytes(h, ip + fixed, n - fixed);
    return h ? h : 1;
}

static struct dedup_entry *table_find(const struct dedup_table *t, uint64_t key) {
    size_t mask = t->cap - 1;
    for (size_t i = (size_t)key & mask;; i = (i + 1) & mask) {
        struct dedup_entry *e = &t->e[i];
        if (!e->used) return NULL;
        if (e->key == key) return e;
    }
}

static int table_put(struct dedup_table *t, uint64_t key, uint64_t ts, uint32_t iface) {
    if ((t->n + 1) * 2 > t->cap) { /* grow: at most half full */
        size_t cap = t->cap * 2;
        struct dedup_entry *e = calloc(cap, sizeof(*e));
        if (!e) return -1;
        for (size_t i = 0; i < t->cap; i++) {
            if (!t->e[i].used) continue;
            size_t j = (size_t)t->e[i].key & (cap - 1);
            while (e[j].used) j = (j + 1) & (cap - 1);
            e[j] = t->e[i];
        }
        free(t->e);
        t->e = e;
        t->cap = cap;
    }
    size_t mask = t->cap - 1;
    size_t i = (size_t)key & mask;
    while (t->e[i].used && t->e[i].key != key) i = (i + 1) & mask;
    if (!t->e[i].used) t->n++;
    t->e[i] = (struct dedup_entry){key, ts, iface, 1};
    return 0;
}

static void table_clear(struct dedup_table *t, uint64_t since) {
    memset(t->e, 0, t->cap * sizeof(*t->e));
    t->n = 0;
    t->since = since;
}

static inline uint64_t absdiff(uint64_t a, uint64_t b) { return a > b ? a - b : b - a; }

/* 1: drop this record (another input's copy of the packet was written within the window); 0: write it (and
 * remember it). Records come in (about) time order: the entries of the window before the current one are kept, so
 * every entry within the window of a record is found. Without memory to remember a packet it is written. */
static int dedup_drop(struct podcap_dedup *d, uint32_t linktype, const uint8_t *data, uint32_t incl, uint32_t orig,
                      uint64_t ts, uint32_t iface) {
    uint64_t key = packet_key(linktype, data, incl, orig);
    if (!key) return 0;
    if (d->cur.n == 0) d->cur.since = ts;
    if (ts > d->cur.since && ts - d->cur.since > d->window) { /* a new window */
        struct dedup_table t = d->old;
        d->old = d->cur;
        d->cur = t;
        table_clear(&d->cur, ts);
        if (ts - d->old.since > 2 * d->window) table_clear(&d->old, ts); /* a long silence: nothing is recent */
    }
    const struct dedup_entry *e = table_find(&d->cur, key);
    if (!e || absdiff(e->ts, ts) > d->window) {
        const struct dedup_entry *o = table_find(&d->old, key);
        if (o && absdiff(o->ts, ts) <= d->window) e = o;
        else e = NULL;
    }
    if (e && e->iface != iface) return 1;
    table_put(&d->cur, key, ts, iface); /* new, or this input's own packet again: from now on the latest */
    return 0;
}

/* One copy per packet in this merge (see the top of this file); window_ns: how far apart two sightings may be. */
int podcap_merge_dedup(struct podcap_merge *m, uint64_t window_ns) {
    dedup_free(m->dedup);
    m->dedup = dedup_new(window_ns);
    return m->dedup ? 0 : -PODCAP_NO_MEMORY;
}

int podcap_merge_linktype(struct podcap_merge *m, uint32_t i, uint32_t linktype) {
    if (i >= m->added) return -1;
    m->in[i].linktype = linktype;
    return 0;
}

/* ---- the live view ---- */

struct live_seg {
    size_t end;       /* buffer offset just past this pushed block's records */
    uint64_t arrival; /* when it was pushed (the caller's monotonic clock, ns) */
    uint64_t last_ts; /* timestamp (ns) of its last record */
};

struct live_input {
    uint32_t iface, ts_scale, divisor, snaplen, linktype;
    uint8_t *buf;
    size_t cap, pos, len; /* buf[pos:len): validated records not yet written */
    struct live_seg *segs;
    size_t seg_head, seg_len, seg_cap; /* segs[seg_head:seg_len) */
    uint64_t last_ts;
    int seen;
    int retired; /* delivers nothing more: holds no one back */
    uint64_t written, dropped;
};

struct podcap_live {
    struct live_input *in;
    size_t n, cap;
    struct podcap_dedup *dedup;
    uint64_t buffered;
};

struct podcap_live *podcap_live_new(uint64_t dedup_window_ns) {
    struct podcap_live *l = calloc(1, sizeof(*l));
    if (!l) return NULL;
    if (dedup_window_ns && !(l->dedup = dedup_new(dedup_window_ns))) {
        free(l);
        return NULL;
    }
    return l;
}

void podcap_live_free(struct podcap_live *l) {
    if (!l) return;
    for (size_t i = 0; i < l->n; i++) {
        free(l->in[i].buf);
        free(l->in[i].segs);
    }
    free(l->in);
    dedup_free(l->dedup);
    free(l);
}

/* A new input (a pod's interface in the output): its index, or -1 without memory. */
int64_t podcap_live_add(struct podcap_live *l, uint32_t iface, uint32_t ts_scale, uint32_t divisor, uint32_t snaplen,
                        uint32_t linktype) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 8;
        struct live_input *in = realloc(l->in, cap * sizeof(*in));
        if (!in) return -1;
        l->in = in;
        l->cap = cap;
    }
    struct live_input *in = &l->in[l->n];
    memset(in, 0, sizeof(*in));
    in->iface = iface;
    in->ts_scale = ts_scale;
    in->divisor = divisor ? divisor : 1;
    in->snaplen = snaplen;
    in->linktype = linktype;
    return (int64_t)l->n++;
}

/* Take a block of bare records of input i (checked as the merge checks them; nothing is taken from a block with a
 * bad record: *err says which and what), pushed at `arrival`. 0, or -code. */
int podcap_live_push(struct podcap_live *l, uint32_t i, const uint8_t *rec, uint64_t len, uint64_t arrival,
                     struct podcap_merge_error *err) {
    memset(err, 0, sizeof(*err));
    if (i >= l->n) return -(err->code = PODCAP_NO_MEMORY);
    struct live_input *in = &l->in[i];
    uint64_t off = 0, last = 0;
    while (off < len) {
        const uint8_t *h = rec + off;
        uint64_t size = 0;
        int rc = podcap_record_check(h, len - off, in->snaplen, &size);
        if (rc != PODCAP_OK) {
            err->offset = off;
            err->left = len - off;
            if (rc != PODCAP_TRUNCATED_HEADER) err->caplen = podcap_record_caplen(h);
            if (rc == PODCAP_BAD_CAPLEN) err->wirelen = podcap_record_wirelen(h);
            return -(err->code = rc);
        }
        last = podcap_record_ts_ns(h, in->ts_scale);
        off += size;
    }
    if (!len) return 0;
    if (in->pos && in->pos == in->len) in->pos = in->len = 0;
    if (in->cap - in->len < len) {
        if (in->pos) { /* move what is left to the front first */
            memmove(in->buf, in->buf + in->pos, in->len - in->pos);
            for (size_t s = in->seg_head; s < in->seg_len; s++) in->segs[s].end -= in->pos;
            in->len -= in->pos;
            in->pos = 0;
        }
        if (in->cap - in->len < len) {
            size_t cap = in->cap ? in->cap : 65536;
            while (cap - in->len < len) cap *= 2;
            uint8_t *b = realloc(in->buf, cap);
            if (!b) return -(err->code = PODCAP_NO_MEMORY);
            in->buf = b;
            in->cap = cap;
        }
    }
    if (in->seg_len == in->seg_cap) {
        if (in->seg_head) {
            memmove(in->segs, in->segs + in->seg_head, (in->seg_len - in->seg_head) * sizeof(*in->segs));
            in->seg_len -= in->seg_head;
            in->seg_head = 0;
        }
        if (in->seg_len == in->seg_cap) {
            size_t cap = in->seg_cap ? in->seg_cap * 2 : 16;
            struct live_seg *s = realloc(in->segs, cap * sizeof(*s));
            if (!s) return -(err->code = PODCAP_NO_MEMORY);
            in->segs = s;
            in->seg_cap = cap;
        }
    }
    memcpy(in->buf + in->len, rec, (size_t)len);
    in->len += (size_t)len;
    in->segs[in->seg_len++] = (struct live_seg){in->len, arrival, last};
    in->last_ts = last;
    in->seen = 1;
    l->buffered += len;
    return 0;
}

/* Up to which timestamp records may be written now: no pod can still deliver an earlier one (each pod's records
 * come in order; a pod that has delivered nothing yet may deliver anything), or they arrived at least `hold` before
 * `now` (a pod is quiet). */
uint64_t podcap_live_release(const struct podcap_live *l, uint64_t now, uint64_t hold) {
    uint64_t watermark = UINT64_MAX, held = 0;
    for (size_t i = 0; i < l->n; i++) {
        const struct live_input *in = &l->in[i];
        uint64_t latest = in->retired ? UINT64_MAX : in->seen ? in->last_ts : 0;
        if (latest < watermark) watermark = latest;
        for (size_t s = in->seg_head; s < in->seg_len && in->segs[s].arrival + hold <= now; s++)
            if (in->segs[s].last_ts > held) held = in->segs[s].last_ts;
    }
    if (!l->n) return 0;
    return watermark > held ? watermark : held;
}

/* Write the held records with timestamps up to `until`, earliest first across inputs (a tie to the later input,
 * as in the merge), as EPBs into out (at most out_cap bytes: call again while it returns a full buffer). Returns the
 * bytes written. */
int64_t podcap_live_pop(struct podcap_live *l, uint64_t until, uint8_t *out, uint64_t out_cap) {
    uint64_t out_len = 0;
    for (;;) {
        struct live_input *best = NULL;
        uint64_t best_ts = 0;
        for (size_t i = 0; i < l->n; i++) {
            struct live_input *in = &l->in[i];
            if (in->pos >= in->len) continue;
            uint64_t ts = podcap_record_ts_ns(in->buf + in->pos, in->ts_scale);
            if (ts > until) continue;
            if (!best || ts <= best_ts) { /* <=: of equal timestamps, the later input */
                best = in;
                best_ts = ts;
            }
        }
        if (!best) break;
        const uint8_t *h = best->buf + best->pos;
        uint32_t incl = podcap_record_caplen(h), orig = podcap_record_wirelen(h);
        const uint8_t *data = h + PODCAP_RECORD_HEADER;
        int drop = l->dedup && dedup_drop(l->dedup, best->linktype, data, incl, orig, best_ts, best->iface);
        if (!drop) {
            uint64_t total = podcap_epb_size(incl);
            if (out_cap - out_len < total) {
                if (out_len == 0) return -PODCAP_NO_MEMORY; /* out cannot hold even this record */
                break;
            }
            podcap_epb_write(out + out_len, data, incl, orig, best->iface, best_ts / best->divisor);
            out_len += total;
            best->written++;
        } else {
            best->dropped++;
        }
        best->pos += PODCAP_RECORD_HEADER + (size_t)incl;
        l->buffered -= PODCAP_RECORD_HEADER + (uint64_t)incl;
        while (best->seg_head < best->seg_len && best->segs[best->seg_head].end <= best->pos) best->seg_head++;
    }
    return (int64_t)out_len;
}

uint64_t podcap_live_buffered(const struct podcap_live *l) { return l->buffered; }

/* Input i will deliver nothing more (a pod expected and announced under another input, a pod whose stream restarted
 * with another format): it no longer holds the others' records back; what it holds is still written in order. */
void podcap_live_retire(struct podcap_live *l, uint32_t i) {
    if (i < l->n) l->in[i].retired = 1;
}

/* Packets written and second sightings left out, per input. */
void podcap_live_counts(const struct podcap_live *l, uint64_t *written, uint64_t *dropped) {
    for (size_t i = 0; i < l->n; i++) {
        written[i] = l->in[i].written;
        dropped[i] = l->in[i].dropped;
    }
}
