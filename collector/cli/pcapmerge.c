/*
 * podcap's merge core: per-pod pcap records (files, or download streams) merged by timestamp into pcapng Enhanced
 * Packet Blocks, in C so that no Python runs per packet (`podcap get --merge FILE`, `--merge -`, `--format pcapng`).
 *
 * Python (podcap.collector.cli.pcapmerge) writes the Section Header and one Interface Description Block per input,
 * flushes, and hands this code the output descriptor and each input's descriptor with its format; this code then
 * writes every record as an EPB (interface = the input's index, timestamp in the IDB's resolution) and Python adds
 * the Interface Statistics Blocks afterwards. The result is byte for byte what the Python writer
 * (podcap.collector.cli.pcapng.PcapngWriter fed by heapq.merge) produces, and tests hold the two to it.
 *
 * Order: a streaming k-way merge with a binary heap of the inputs' next records: the earliest first, and of equal
 * timestamps the one from the later input (mergecap's rule: its is_earlier() holds on equality, so the last input
 * holding the earliest time wins). Each input's own order is kept even where it is not time-ordered (a clock step
 * on a node). That is mergecap's order exactly, and tests compare the two. Memory is bounded whatever the capture
 * size: one read buffer per input (block_size, grown only for a record longer than that, which must fit in its
 * file) and one output buffer. Records are checked as podcap.pcapfile checks them (caplen within snaplen and wire
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
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "pcapng blocks are written in host byte order, and podcap writes little-endian files"
#endif

enum {
    PODCAP_MERGE_OK = 0,
    PODCAP_MERGE_TRUNCATED_HEADER = 1, /* fewer than 16 bytes left where a record header should start */
    PODCAP_MERGE_BAD_CAPLEN = 2,       /* caplen > snaplen or caplen > wire length */
    PODCAP_MERGE_TRUNCATED_RECORD = 3, /* the record's data runs past the end of the file */
    PODCAP_MERGE_READ_ERROR = 4,       /* reading an input failed: errno_value */
    PODCAP_MERGE_WRITE_ERROR = 5,      /* writing the output failed: errno_value (EPIPE: the reader went away) */
    PODCAP_MERGE_NO_MEMORY = 6,
};

/* podcap_merge_run's answers besides 0 (done) and -code (an error). */
#define PODCAP_MERGE_MORE 1 /* max_out reached: call again */
#define PODCAP_MERGE_NEED 2 /* a fed input needs its next block: podcap_merge_needed says which */

#define EPB_TYPE 6u
#define EPB_FIXED 32u /* type, total length, interface, ts high, ts low, caplen, wire length ... total length */

struct podcap_merge_error {
    int32_t code;
    int32_t errno_value;
    uint64_t input;  /* which input (index as added) */
    uint64_t offset; /* file offset of the offending record */
    uint64_t caplen;
    uint64_t wirelen;
    uint64_t left;   /* bytes left in the file from offset (truncation) */
};

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
};

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
    struct podcap_merge_error err;
};

static inline uint32_t le32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

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
    if (!in->buf) return fail(m, PODCAP_MERGE_NO_MEMORY, m->added, start);
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
        return fail(m, PODCAP_MERGE_READ_ERROR, m->added, start);
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
int podcap_merge_feed(struct podcap_merge *m, uint32_t i, const uint8_t *data, uint64_t len) {
    if (i >= m->added || m->in[i].fd >= 0) return -1;
    struct input *in = &m->in[i];
    if (len == 0) {
        in->eof = 1;
        return 0;
    }
    size_t rest = in->len - in->pos;
    if (in->pos) {
        memmove(in->buf, in->buf + in->pos, rest);
        in->buf_off += in->pos;
        in->pos = 0;
        in->len = rest;
    }
    if (in->cap - in->len < len) {
        uint8_t *grown = realloc(in->buf, in->len + (size_t)len);
        if (!grown) return fail(m, PODCAP_MERGE_NO_MEMORY, i, in->buf_off);
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
    size_t rest = in->len - in->pos;
    if (in->pos) {
        memmove(in->buf, in->buf + in->pos, rest);
        in->buf_off += in->pos;
        in->pos = 0;
        in->len = rest;
    }
    for (;;) {
        ssize_t r = pread(in->fd, in->buf + in->len, in->cap - in->len, (off_t)in->next_read);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            m->err.errno_value = errno;
            return fail(m, PODCAP_MERGE_READ_ERROR, i, in->next_read);
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
        if (avail >= 16) {
            const uint8_t *h = in->buf + in->pos;
            uint32_t incl = le32(h + 8), orig = le32(h + 12);
            if (incl > in->snaplen || incl > orig) {
                m->err.caplen = incl;
                m->err.wirelen = orig;
                return fail(m, PODCAP_MERGE_BAD_CAPLEN, i, rec_off);
            }
            size_t need = 16 + (size_t)incl;
            if (avail >= need) {
                in->head_ts = ((uint64_t)le32(h) * 1000000000ull + (uint64_t)le32(h + 4) * in->ts_scale);
                return 1;
            }
            if ((in->fd >= 0 && rec_off + need > in->file_size) || in->eof) {
                m->err.caplen = incl;
                m->err.left = in->fd >= 0 && in->file_size > rec_off + avail ? in->file_size - rec_off : avail;
                return fail(m, PODCAP_MERGE_TRUNCATED_RECORD, i, rec_off);
            }
            if (in->fd >= 0 && need > in->cap) { /* longer than the block: it is in the file, so it fits */
                uint8_t *grown = realloc(in->buf, need);
                if (!grown) return fail(m, PODCAP_MERGE_NO_MEMORY, i, rec_off);
                in->buf = grown;
                in->cap = need;
            }
        } else if (in->eof) {
            if (avail == 0) return 0;
            m->err.left = avail;
            return fail(m, PODCAP_MERGE_TRUNCATED_HEADER, i, rec_off);
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
            return fail(m, PODCAP_MERGE_WRITE_ERROR, 0, 0);
        }
        done += (size_t)w;
    }
    m->flushed += m->out_len;
    m->out_len = 0;
    return 0;
}

/* One record (header at rec, caplen incl, wire length orig) as an EPB at o: exactly epb_size(incl) bytes. */
static inline size_t epb_size(uint32_t incl) { return EPB_FIXED + (size_t)incl + (size_t)(-incl & 3u); }

static inline void write_epb(uint8_t *o, const uint8_t *rec, uint32_t incl, uint32_t orig, uint32_t iface,
                             uint64_t ts) {
    uint32_t pad = (uint32_t)(-incl & 3u);
    uint32_t total = (uint32_t)epb_size(incl);
    uint32_t head[7] = {EPB_TYPE, total, iface, (uint32_t)(ts >> 32), (uint32_t)ts, incl, orig};
    memcpy(o, head, sizeof(head));
    memcpy(o + 28, rec + 16, incl);
    memset(o + 28 + incl, 0, pad);
    memcpy(o + 28 + incl + pad, &total, 4);
}

static int emit(struct podcap_merge *m, struct input *in) {
    const uint8_t *rec = in->buf + in->pos;
    uint32_t incl = le32(rec + 8), orig = le32(rec + 12);
    size_t total = epb_size(incl);
    if (m->out_cap - m->out_len < total) {
        int rc = flush_out(m);
        if (rc < 0) return rc;
        if (total > m->out_cap) {
            uint8_t *grown = realloc(m->out, total);
            if (!grown) return fail(m, PODCAP_MERGE_NO_MEMORY, (size_t)in->iface, in->buf_off + in->pos);
            m->out = grown;
            m->out_cap = total;
        }
    }
    write_epb(m->out + m->out_len, rec, incl, orig, in->iface, in->head_ts / in->divisor);
    m->out_len += total;
    in->pos += 16 + (size_t)incl;
    in->packets++;
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

void podcap_merge_get_error(const struct podcap_merge *m, struct podcap_merge_error *out) { *out = m->err; }

/*
 * One block of bare pcap records (no file header) as EPBs on interface iface, into out: the live stream of
 * podcap-extcap, where each message holds one pod's records and the order is the collector's. Same checks, same
 * timestamp (ns // divisor) and same EPB layout as the merge. out must hold podcap_epbs_room(len) bytes. Returns
 * the bytes written, or -code with *err saying which record (offset in the block) and what was wrong.
 */
uint64_t podcap_epbs_room(uint64_t len) { return len + (len / 16 + 1) * 20; }

int64_t podcap_epbs(const uint8_t *rec, uint64_t len, uint32_t iface, uint32_t ts_scale, uint32_t divisor,
                    uint32_t snaplen, uint8_t *out, uint64_t out_cap, struct podcap_merge_error *err) {
    uint64_t off = 0, out_len = 0;
    memset(err, 0, sizeof(*err));
    while (off < len) {
        uint64_t avail = len - off;
        if (avail < 16) {
            err->left = avail;
            err->offset = off;
            return -(err->code = PODCAP_MERGE_TRUNCATED_HEADER);
        }
        const uint8_t *h = rec + off;
        uint32_t incl = le32(h + 8), orig = le32(h + 12);
        if (incl > snaplen || incl > orig) {
            err->caplen = incl;
            err->wirelen = orig;
            err->offset = off;
            return -(err->code = PODCAP_MERGE_BAD_CAPLEN);
        }
        if (16 + (uint64_t)incl > avail) {
            err->caplen = incl;
            err->left = avail;
            err->offset = off;
            return -(err->code = PODCAP_MERGE_TRUNCATED_RECORD);
        }
        uint64_t total = epb_size(incl);
        if (out_cap - out_len < total) {
            err->offset = off;
            return -(err->code = PODCAP_MERGE_NO_MEMORY);
        }
        uint64_t ts = ((uint64_t)le32(h) * 1000000000ull + (uint64_t)le32(h + 4) * ts_scale) / divisor;
        write_epb(out + out_len, h, incl, orig, iface, ts);
        out_len += total;
        off += 16 + (uint64_t)incl;
    }
    return (int64_t)out_len;
}
