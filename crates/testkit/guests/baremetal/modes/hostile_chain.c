/* Hostile cases: descriptor chains and the available ring (virtio-blk's
 * request queue on the writable disk, and virtio-rng). */
#include "hostile.h"

#define W VRING_DESC_F_WRITE
#define N VRING_DESC_F_NEXT
#define I VRING_DESC_F_INDIRECT

static struct blk_hdr hdr __attribute__((aligned(16)));
static u8 st __attribute__((aligned(16)));
static u8 data[4096] __attribute__((aligned(4096)));
#define ST_UNTOUCHED 0xaa

static struct vq *bq(void) { return &hv_blk.vq[0]; }

static void prep(u32 type, u64 sector)
{
    hdr.type = type;
    hdr.reserved = 0;
    hdr.sector = sector;
    st = ST_UNTOUCHED;
    memset(data, 0xcc, sizeof(data));
}

/* Posts head on the disk's queue and waits for its used entry. */
static int run(u16 head, u32 *len)
{
    s32 n = vq_run(&hv_blk, bq(), head, WAIT_MS);
    if (n < 0)
        return -1;
    *len = (u32)n;
    return 0;
}

/* data[0..len) holds sector `sector` and on of the writable disk. */
static int data_matches(u64 sector, u32 len)
{
    for (u32 i = 0; i < len; i++)
        if (data[i] != disk_pattern(0, sector * SECTOR + i))
            return 0;
    return 1;
}

#define RUN(head, len) CHECK(run(head, &len) == 0, "no answer from the device")
#define EXPECT_DROPPED(len)                                                                 \
    do {                                                                                    \
        CHECK(len == 0, "used length %u, want 0 (no status byte)", len);                    \
        CHECK(st == ST_UNTOUCHED, "status byte written (%x)", st);                          \
    } while (0)
#define EXPECT_STATUS(len, want)                                                            \
    do {                                                                                    \
        CHECK(len == 1 && st == (want), "used length %u status %x, want 1 and %x", len, st,  \
              want);                                                                        \
    } while (0)

static void self_loop(void)
{
    prep(BLK_T_IN, 0);
    vq_desc(bq(), 0, (u32)&hdr, 16, N, 0);
    u32 len;
    RUN(0, len);
    EXPECT_DROPPED(len);
}

static void two_cycle(void)
{
    prep(BLK_T_IN, 0);
    vq_desc(bq(), 0, (u32)&hdr, 16, N, 1);
    vq_desc(bq(), 1, (u32)&st, 1, W | N, 0);
    u32 len;
    RUN(0, len);
    /* The walk stops after a queue's worth of descriptors; readable ones
     * after writable ones make it an I/O error. */
    EXPECT_STATUS(len, BLK_S_IOERR);
}

static void loop_over_whole_table(void)
{
    prep(BLK_T_IN, 0);
    struct vq *q = bq();
    for (u16 i = 0; i < q->size; i++)
        vq_desc(q, i, (u32)&hdr, 16, N, (u16)((i + 1) % q->size));
    u32 len;
    RUN(0, len);
    EXPECT_DROPPED(len);
}

static void next_out_of_range(void)
{
    prep(BLK_T_IN, 0);
    vq_desc(bq(), 0, (u32)&hdr, 16, N, 300);
    vq_desc(bq(), 1, (u32)&st, 1, W, 0);
    u32 len;
    RUN(0, len);
    EXPECT_DROPPED(len);
}

/* A request whose data buffer is at `addr` (len bytes, device-writable). */
static void bad_data(u64 addr, u32 dlen)
{
    prep(BLK_T_IN, 0);
    vq_desc(bq(), 0, (u32)&hdr, 16, N, 1);
    vq_desc(bq(), 1, addr, dlen, W | N, 2);
    vq_desc(bq(), 2, (u32)&st, 1, W, 0);
    u32 len;
    RUN(0, len);
    EXPECT_STATUS(len, BLK_S_IOERR);
}

static void addr_outside_ram(void) { bad_data(ABOVE_RAM, 512); }
static void addr_in_own_bar(void) { bad_data(hv_blk.bar, 512); }
static void addr_in_ecam(void) { bad_data(PCI_ECAM_BASE, 512); }
static void addr_wraps(void) { bad_data(0xffffffffffffff00ull, 512); }
static void addr_straddles_ram_end(void) { bad_data(ram_top - 256, 512); }
static void huge_len(void) { bad_data((u32)data, 0xfffffe00u); }

/* Five 32 MiB buffers: 160 MiB, over the 128 MiB a request may carry. */
static void total_over_cap(void)
{
    u32 big = 32u << 20;
    u8 *buf = dma_alloc(big, 4096);
    buf[0] = 0xcc;
    prep(BLK_T_IN, 0);
    vq_desc(bq(), 0, (u32)&hdr, 16, N, 1);
    for (u16 i = 1; i <= 5; i++)
        vq_desc(bq(), i, (u32)buf, big, W | N, i + 1);
    vq_desc(bq(), 6, (u32)&st, 1, W, 0);
    u32 len;
    RUN(0, len);
    EXPECT_STATUS(len, BLK_S_IOERR);
    CHECK(buf[0] == 0xcc, "data written by a refused request");
}

static void zero_len_skipped(void)
{
    prep(BLK_T_IN, 3);
    vq_desc(bq(), 0, (u32)&hdr, 16, N, 1);
    vq_desc(bq(), 1, (u32)&hdr, 0, N, 2);
    vq_desc(bq(), 2, (u32)data, 512, W | N, 3);
    vq_desc(bq(), 3, 0, 0, W | N, 4);
    vq_desc(bq(), 4, (u32)&st, 1, W, 0);
    u32 len;
    RUN(0, len);
    CHECK(len == 513 && st == BLK_S_OK, "used %u status %x", len, st);
    CHECK(data_matches(3, 512), "wrong data");
}

static void all_zero_len(void)
{
    prep(BLK_T_IN, 0);
    vq_desc(bq(), 0, (u32)&hdr, 0, N, 1);
    vq_desc(bq(), 1, (u32)&st, 0, W, 0);
    u32 len;
    RUN(0, len);
    EXPECT_DROPPED(len);
}

static void header_short(void)
{
    prep(BLK_T_IN, 0);
    vq_desc(bq(), 0, (u32)&hdr, 8, N, 1);
    vq_desc(bq(), 1, (u32)&st, 1, W, 0);
    u32 len;
    RUN(0, len);
    EXPECT_STATUS(len, BLK_S_IOERR);
}

/* The header in four 4-byte pieces is a valid request. */
static void header_split(void)
{
    prep(BLK_T_IN, 5);
    for (u16 i = 0; i < 4; i++)
        vq_desc(bq(), i, (u32)&hdr + 4 * i, 4, N, i + 1);
    vq_desc(bq(), 4, (u32)data, 512, W | N, 5);
    vq_desc(bq(), 5, (u32)&st, 1, W, 0);
    u32 len;
    RUN(0, len);
    CHECK(len == 513 && st == BLK_S_OK, "used %u status %x", len, st);
    CHECK(data_matches(5, 512), "wrong data");
}

static void wrong_direction_in(void)
{
    prep(BLK_T_IN, 0);
    vq_desc(bq(), 0, (u32)&hdr, 16, N, 1);
    vq_desc(bq(), 1, (u32)data, 512, N, 2);
    vq_desc(bq(), 2, (u32)&st, 1, W, 0);
    u32 len;
    RUN(0, len);
    EXPECT_STATUS(len, BLK_S_IOERR);
}

static void wrong_direction_out(void)
{
    prep(BLK_T_OUT, 6);
    vq_desc(bq(), 0, (u32)&hdr, 16, N, 1);
    vq_desc(bq(), 1, (u32)data, 512, W | N, 2);
    vq_desc(bq(), 2, (u32)&st, 1, W, 0);
    u32 len;
    RUN(0, len);
    EXPECT_STATUS(len, BLK_S_IOERR);
    char why[120];
    CHECK(blk_check_sector(&hv_blk, 0, 6, why, sizeof(why)) == 0, "disk changed: %s", why);
}

/* Without a separate status descriptor the status is the data's last
 * byte: 511 bytes of data, so an I/O error written there. */
static void missing_status(void)
{
    prep(BLK_T_IN, 0);
    vq_desc(bq(), 0, (u32)&hdr, 16, N, 1);
    vq_desc(bq(), 1, (u32)data, 512, W, 0);
    u32 len;
    RUN(0, len);
    CHECK(len == 1 && data[511] == BLK_S_IOERR, "used %u, last byte %x", len, data[511]);
}

static void status_readonly(void)
{
    prep(BLK_T_IN, 0);
    vq_desc(bq(), 0, (u32)&hdr, 16, N, 1);
    vq_desc(bq(), 1, (u32)data, 512, W | N, 2);
    vq_desc(bq(), 2, (u32)&st, 1, 0, 0);
    u32 len;
    RUN(0, len);
    EXPECT_DROPPED(len);
    CHECK(data[0] == 0xcc, "data written without a status byte");
}

static void readable_after_writable(void)
{
    prep(BLK_T_IN, 0);
    vq_desc(bq(), 0, (u32)&hdr, 16, N, 1);
    vq_desc(bq(), 1, (u32)&st, 1, W | N, 2);
    vq_desc(bq(), 2, (u32)data, 512, 0, 0);
    u32 len;
    RUN(0, len);
    EXPECT_DROPPED(len);
}

/* The indirect table of a valid read of `sector`. */
static struct vring_desc *indirect_read(u64 sector)
{
    struct vring_desc *t = dma_alloc(3 * 16, 16);
    prep(BLK_T_IN, sector);
    t[0] = (struct vring_desc){(u32)&hdr, 16, N, 1};
    t[1] = (struct vring_desc){(u32)data, 512, W | N, 2};
    t[2] = (struct vring_desc){(u32)&st, 1, W, 0};
    return t;
}

static void indirect_valid(void)
{
    struct vring_desc *t = indirect_read(7);
    vq_desc(bq(), 0, (u32)t, 48, I, 0);
    u32 len;
    RUN(0, len);
    CHECK(len == 513 && st == BLK_S_OK, "used %u status %x", len, st);
    CHECK(data_matches(7, 512), "wrong data");
}

static void indirect_outside_ram(void)
{
    prep(BLK_T_IN, 0);
    vq_desc(bq(), 0, ABOVE_RAM, 48, I, 0);
    u32 len;
    RUN(0, len);
    EXPECT_DROPPED(len);
}

static void indirect_bad_len(void)
{
    struct vring_desc *t = indirect_read(0);
    vq_desc(bq(), 0, (u32)t, 17, I, 0);
    u32 len;
    RUN(0, len);
    EXPECT_DROPPED(len);
    vq_desc(bq(), 0, (u32)t, 0, I, 0);
    RUN(0, len);
    EXPECT_DROPPED(len);
    vq_desc(bq(), 0, (u32)t, 0xfffffff0u, I, 0);
    RUN(0, len);
    EXPECT_DROPPED(len);
}

static void indirect_nested(void)
{
    struct vring_desc *inner = indirect_read(0);
    struct vring_desc *outer = dma_alloc(2 * 16, 16);
    outer[0] = (struct vring_desc){(u32)&hdr, 16, N, 1};
    outer[1] = (struct vring_desc){(u32)inner, 48, I, 0};
    vq_desc(bq(), 0, (u32)outer, 32, I, 0);
    u32 len;
    RUN(0, len);
    EXPECT_DROPPED(len);
}

/* INDIRECT together with NEXT (forbidden to drivers): the device follows
 * the table; either way the request is answered, and never wrongly. */
static void indirect_with_next(void)
{
    struct vring_desc *t = indirect_read(9);
    vq_desc(bq(), 0, (u32)t, 48, I | N, 1);
    vq_desc(bq(), 1, (u32)&st, 1, W, 0);
    u32 len;
    RUN(0, len);
    if (st == BLK_S_OK)
        CHECK(len == 513 && data_matches(9, 512), "OK with used %u and wrong data", len);
    else
        CHECK(st == BLK_S_IOERR || (len == 0 && st == ST_UNTOUCHED), "used %u status %x", len,
              st);
    hnote("answered %s", st == BLK_S_OK ? "OK (the table was followed)" : "with an error");
}

/* An indirect table of the most descriptors (65535) whose first entry
 * chains to itself: the walk stops after 65535 steps. */
static void indirect_huge(void)
{
    u32 n = 65535;
    struct vring_desc *t = dma_alloc(n * 16, 4096);
    t[0] = (struct vring_desc){(u32)&hdr, 16, N, 0};
    prep(BLK_T_IN, 0);
    vq_desc(bq(), 0, (u32)t, n * 16, I, 0);
    u32 len;
    RUN(0, len);
    EXPECT_DROPPED(len);
}

/* A read whose data comes back in 254 512-byte descriptors. */
static void max_segments(void)
{
    struct vq *q = bq();
    u32 nseg = q->size - 2;
    u8 *buf = dma_alloc(nseg * 512, 4096);
    memset(buf, 0xcc, nseg * 512);
    prep(BLK_T_IN, 0);
    vq_desc(q, 0, (u32)&hdr, 16, N, 1);
    for (u16 i = 0; i < nseg; i++)
        vq_desc(q, i + 1, (u32)buf + i * 512, 512, W | N, i + 2);
    vq_desc(q, (u16)(nseg + 1), (u32)&st, 1, W, 0);
    u32 len;
    RUN(0, len);
    CHECK(len == nseg * 512 + 1 && st == BLK_S_OK, "used %u status %x", len, st);
    /* The first and last bytes of every segment. */
    for (u32 i = 0; i < nseg * 512; i += 511)
        CHECK(buf[i] == disk_pattern(0, i), "byte %u wrong", i);
}

/* A read whose data lands on the queue's own descriptor table and
 * available ring: the device runs on what it wrote there, within bounds,
 * until the driver resets it. */
static void dma_into_own_rings(void)
{
    struct vq *q = bq();
    prep(BLK_T_IN, 12);
    vq_desc(q, 0, (u32)&hdr, 16, N, 1);
    vq_desc(q, 1, (u32)q->desc, 0x1000 + 0x200, W | N, 2);
    vq_desc(q, 2, (u32)&st, 1, W, 0);
    vq_post(q, 0);
    vq_kick(&hv_blk, q);
    delay_ms(20);
    REINIT(&hv_blk);
    hnote("the driver resets after the device overwrote its rings");
}

/* The available index 1000 ahead of the ring: refused; once the driver
 * puts it right, the same request is served. */
static void avail_idx_far_ahead(void)
{
    struct vq *q = bq();
    prep(BLK_T_IN, 4);
    vq_desc(q, 0, (u32)&hdr, 16, N, 1);
    vq_desc(q, 1, (u32)data, 512, W | N, 2);
    vq_desc(q, 2, (u32)&st, 1, W, 0);
    WRITE_ONCE(q->avail->ring[q->next_avail % q->size], 0);
    mb();
    WRITE_ONCE(q->avail->idx, (u16)(q->next_avail + 1000));
    vq_kick(&hv_blk, q);
    CHECK(vq_wait(q, 1, 30, NULL) != 0, "served with a bogus available index");
    q->next_avail++;
    WRITE_ONCE(q->avail->idx, q->next_avail);
    vq_kick(&hv_blk, q);
    struct vring_used_elem e;
    CHECK(vq_wait(q, 1, WAIT_MS, &e) == 0, "not served once the index was put right");
    CHECK(e.len == 513 && st == BLK_S_OK && data_matches(4, 512), "used %u status %x", e.len, st);
}

/* The available index moved backwards (behind what the device took). */
static void avail_idx_backwards(void)
{
    struct vq *q = bq();
    WRITE_ONCE(q->avail->idx, (u16)(q->next_avail - 5));
    vq_kick(&hv_blk, q);
    CHECK(vq_wait(q, 1, 30, NULL) != 0, "served with an index moved back");
    WRITE_ONCE(q->avail->idx, q->next_avail);
    vq_kick(&hv_blk, q);
}

/* A head index beyond the queue, then a good request in the same batch:
 * the good one must be served. */
static void head_out_of_range(void)
{
    struct vq *q = bq();
    prep(BLK_T_IN, 8);
    vq_desc(q, 0, (u32)&hdr, 16, N, 1);
    vq_desc(q, 1, (u32)data, 512, W | N, 2);
    vq_desc(q, 2, (u32)&st, 1, W, 0);
    WRITE_ONCE(q->avail->ring[q->next_avail % q->size], 300);
    WRITE_ONCE(q->avail->ring[(u16)(q->next_avail + 1) % q->size], 0);
    mb();
    q->next_avail += 2;
    WRITE_ONCE(q->avail->idx, q->next_avail);
    vq_kick(&hv_blk, q);
    struct vring_used_elem e;
    CHECK(vq_wait(q, 1, WAIT_MS, &e) == 0, "the good request after a bad head was never served");
    CHECK(e.id == 0, "used entry for head %u", e.id);
    CHECK(e.len == 513 && st == BLK_S_OK && data_matches(8, 512), "used %u status %x", e.len, st);
}

/* The same head twice in one batch: served twice. */
static void same_head_twice(void)
{
    struct vq *q = bq();
    prep(BLK_T_IN, 10);
    vq_desc(q, 0, (u32)&hdr, 16, N, 1);
    vq_desc(q, 1, (u32)data, 512, W | N, 2);
    vq_desc(q, 2, (u32)&st, 1, W, 0);
    WRITE_ONCE(q->avail->ring[q->next_avail % q->size], 0);
    WRITE_ONCE(q->avail->ring[(u16)(q->next_avail + 1) % q->size], 0);
    mb();
    q->next_avail += 2;
    WRITE_ONCE(q->avail->idx, q->next_avail);
    vq_kick(&hv_blk, q);
    struct vring_used_elem e[2];
    CHECK(vq_wait(q, 2, WAIT_MS, e) == 0, "two answers expected");
    CHECK(e[0].len == 513 && e[1].len == 513 && st == BLK_S_OK, "used %u/%u status %x", e[0].len,
          e[1].len, st);
}

/* virtio-rng */
static u8 rb[8192] __attribute__((aligned(4096)));
static struct vq *rq(void) { return &hv_rng.vq[0]; }

/* Zeroes 64 bytes every KiB of [from, to) and the first 64 at `to`... */
static void mark_zero(u8 *buf, u32 from, u32 to)
{
    for (u32 i = from; i < to; i += 1024)
        memset(buf + i, 0, 64);
}

/* ...and checks they are still zero (random bytes would not all be). */
static int still_zero(const u8 *buf, u32 from, u32 to)
{
    static const u8 zeros[64];
    for (u32 i = from; i < to; i += 1024)
        if (memcmp(buf + i, zeros, 64))
            return 0;
    return 1;
}

/* One descriptor of 4 GiB - 1 bytes: at most 64 KiB are written. */
static void rng_huge_desc(void)
{
    u8 *buf = dma_alloc(128 << 10, 4096);
    mark_zero(buf, 0, 128 << 10);
    vq_desc(rq(), 0, (u32)buf, 0xffffffffu, W, 0);
    s32 n = vq_run(&hv_rng, rq(), 0, WAIT_MS);
    CHECK_EQ(n, 65536, "bytes written");
    CHECK(!still_zero(buf, 0, 1024), "the first KiB was not written");
    CHECK(still_zero(buf, 65536, 128 << 10), "bytes past the cap written");
}

static void rng_readonly_desc(void)
{
    memset(rb, 0, sizeof(rb));
    vq_desc(rq(), 0, (u32)rb, 64, 0, 0);
    CHECK_EQ(vq_run(&hv_rng, rq(), 0, WAIT_MS), 0, "used length");
    for (u32 i = 0; i < 64; i++)
        CHECK(rb[i] == 0, "read-only buffer written");
}

static void rng_outside_ram(void)
{
    vq_desc(rq(), 0, ABOVE_RAM, 64, W, 0);
    CHECK_EQ(vq_run(&hv_rng, rq(), 0, WAIT_MS), 0, "used length");
    vq_desc(rq(), 0, hv_rng.bar, 64, W, 0);
    CHECK_EQ(vq_run(&hv_rng, rq(), 0, WAIT_MS), 0, "used length (own BAR)");
}

/* A buffer running past the end of RAM: only what lies in RAM is written. */
static void rng_straddles_ram_end(void)
{
    vq_desc(rq(), 0, ram_top - 16, 64, W, 0);
    s32 n = vq_run(&hv_rng, rq(), 0, WAIT_MS);
    CHECK(n == 16 || n == 0, "used length %d", n);
    hnote("%d bytes", n);
}

/* 256 writable 4 KiB descriptors: capped at 64 KiB too. */
static void rng_many_descs(void)
{
    struct vq *q = rq();
    u8 *buf = dma_alloc(q->size * 4096u, 4096);
    mark_zero(buf, 0, q->size * 4096u);
    for (u16 i = 0; i < q->size; i++)
        vq_desc(q, i, (u32)buf + i * 4096u, 4096, W | (i + 1 < q->size ? N : 0), i + 1);
    CHECK_EQ(vq_run(&hv_rng, q, 0, WAIT_MS), 65536, "bytes written");
    CHECK(!still_zero(buf, 61440, 65536), "the last KiB under the cap was not written");
    CHECK(still_zero(buf, 65536, q->size * 4096u), "bytes past the cap written");
}

/* Readable descriptors in an RNG chain are skipped. */
static void rng_mixed_directions(void)
{
    memset(rb, 0, sizeof(rb));
    vq_desc(rq(), 0, (u32)rb, 100, N, 1);
    vq_desc(rq(), 1, (u32)rb + 4096, 100, W | N, 2);
    vq_desc(rq(), 2, (u32)rb + 200, 50, 0, 0);
    CHECK_EQ(vq_run(&hv_rng, rq(), 0, WAIT_MS), 100, "bytes written");
    for (u32 i = 0; i < 250; i++)
        CHECK(rb[i] == 0, "readable buffer written");
}

static const struct hcase cases[] = {
    {"chain-self-loop", self_loop, D_BLK},
    {"chain-two-cycle", two_cycle, D_BLK},
    {"chain-loop-over-whole-table", loop_over_whole_table, D_BLK},
    {"chain-next-out-of-range", next_out_of_range, D_BLK},
    {"chain-addr-outside-ram", addr_outside_ram, D_BLK},
    {"chain-addr-in-own-bar", addr_in_own_bar, D_BLK},
    {"chain-addr-in-ecam", addr_in_ecam, D_BLK},
    {"chain-addr-wraps-u64", addr_wraps, D_BLK},
    {"chain-addr-straddles-ram-end", addr_straddles_ram_end, D_BLK},
    {"chain-huge-len", huge_len, D_BLK},
    {"chain-total-over-128m", total_over_cap, D_BLK},
    {"chain-zero-len-skipped", zero_len_skipped, D_BLK},
    {"chain-all-zero-len", all_zero_len, D_BLK},
    {"chain-header-short", header_short, D_BLK},
    {"chain-header-split", header_split, D_BLK},
    {"chain-wrong-direction-in", wrong_direction_in, D_BLK},
    {"chain-wrong-direction-out", wrong_direction_out, D_BLK},
    {"chain-missing-status", missing_status, D_BLK},
    {"chain-status-readonly", status_readonly, D_BLK},
    {"chain-readable-after-writable", readable_after_writable, D_BLK},
    {"chain-indirect-valid", indirect_valid, D_BLK},
    {"chain-indirect-outside-ram", indirect_outside_ram, D_BLK},
    {"chain-indirect-bad-len", indirect_bad_len, D_BLK},
    {"chain-indirect-nested", indirect_nested, D_BLK},
    {"chain-indirect-with-next", indirect_with_next, D_BLK},
    {"chain-indirect-65535-loop", indirect_huge, D_BLK},
    {"chain-254-segments", max_segments, D_BLK},
    {"chain-dma-into-own-rings", dma_into_own_rings, D_BLK},
    {"avail-idx-far-ahead", avail_idx_far_ahead, D_BLK},
    {"avail-idx-backwards", avail_idx_backwards, D_BLK},
    {"avail-head-out-of-range", head_out_of_range, D_BLK},
    {"avail-same-head-twice", same_head_twice, D_BLK},
    {"rng-huge-descriptor", rng_huge_desc, D_RNG},
    {"rng-readonly-descriptor", rng_readonly_desc, D_RNG},
    {"rng-outside-ram", rng_outside_ram, D_RNG},
    {"rng-straddles-ram-end", rng_straddles_ram_end, D_RNG},
    {"rng-256-descriptors", rng_many_descs, D_RNG},
    {"rng-mixed-directions", rng_mixed_directions, D_RNG},
};
HGROUP(hostile_chain, cases);
