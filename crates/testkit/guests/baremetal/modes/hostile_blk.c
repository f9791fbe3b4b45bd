/* Hostile cases: virtio-blk requests (well-formed chains, bad contents).
 * Sectors from SCRATCH up on the writable disk are free for writes; the
 * read-only disk must come out byte for byte as the host wrote it. */
#include "hostile.h"

#define SCRATCH 1500

static u8 buf[8192] __attribute__((aligned(4096)));

static u32 req(struct vdev *d, u32 type, u64 sector, u32 len, u32 *used)
{
    return blk_request(d, type, sector, buf, len, used);
}

#define EXPECT(d, type, sector, len, want, what)                                             \
    do {                                                                                     \
        u32 used_, st_ = req(d, type, sector, len, &used_);                                  \
        CHECK(st_ == (want) && used_ == 1, "%s: status %x used %u, want %x", what, st_, used_, \
              want);                                                                         \
    } while (0)

static void sector_past_end(void)
{
    struct vdev *d = &hv_blk;
    u64 cap = blk_capacity(d);
    EXPECT(d, BLK_T_IN, cap, 512, BLK_S_IOERR, "read at the capacity");
    EXPECT(d, BLK_T_IN, cap - 1, 1024, BLK_S_IOERR, "read across the end");
    EXPECT(d, BLK_T_OUT, cap, 512, BLK_S_IOERR, "write at the capacity");
    EXPECT(d, BLK_T_OUT, cap - 1, 1024, BLK_S_IOERR, "write across the end");
    char why[120];
    CHECK(blk_check_sector(d, 0, cap - 1, why, sizeof(why)) == 0, "last sector: %s", why);
}

static void sector_huge(void)
{
    struct vdev *d = &hv_blk;
    EXPECT(d, BLK_T_IN, 0xffffffffffffffffull, 512, BLK_S_IOERR, "sector u64::MAX");
    EXPECT(d, BLK_T_IN, 1ull << 55, 512, BLK_S_IOERR, "sector 2^55 (bytes overflow)");
    EXPECT(d, BLK_T_IN, (1ull << 54) - 1, 512, BLK_S_IOERR, "sector 2^54-1");
    EXPECT(d, BLK_T_OUT, 0xffffffffffffffffull, 512, BLK_S_IOERR, "write at u64::MAX");
}

static void unknown_type(void)
{
    static const u32 types[] = {2, 3, 5, 7, 9, 10, 12, 14, 0x7fff, 0xffffffff};
    for (u32 i = 0; i < ARRAY_SIZE(types); i++) {
        u32 used, st = req(&hv_blk, types[i], 0, 0, &used);
        CHECK(st == BLK_S_UNSUPP && used == 1, "type %x: status %x used %u", types[i], st, used);
    }
}

static void len_unaligned(void)
{
    struct vdev *d = &hv_blk;
    EXPECT(d, BLK_T_IN, 0, 100, BLK_S_IOERR, "read of 100 bytes");
    EXPECT(d, BLK_T_IN, 0, 513, BLK_S_IOERR, "read of 513 bytes");
    memset(buf, 0x11, 700);
    EXPECT(d, BLK_T_OUT, SCRATCH, 700, BLK_S_IOERR, "write of 700 bytes");
    u32 used;
    CHECK(req(d, BLK_T_IN, SCRATCH, 512, &used) == BLK_S_OK, "read back");
    CHECK(buf[0] != 0x11 || buf[1] != 0x11, "a refused write reached the disk");
}

static void write_readonly(void)
{
    struct vdev *d = &hv_ro;
    memset(buf, 0x66, sizeof(buf));
    EXPECT(d, BLK_T_OUT, 0, 512, BLK_S_IOERR, "write to the read-only disk");
    EXPECT(d, BLK_T_OUT, 1, 4096, BLK_S_IOERR, "write of 8 sectors");
    /* DISCARD and WRITE_ZEROES with a well-formed segment. */
    u32 *seg = (u32 *)buf;
    seg[0] = 0, seg[1] = 0, seg[2] = 8, seg[3] = 0;
    EXPECT(d, BLK_T_DISCARD, 0, 16, BLK_S_IOERR, "discard on the read-only disk");
    EXPECT(d, BLK_T_WRITE_ZEROES, 0, 16, BLK_S_IOERR, "write zeroes on the read-only disk");
    char why[120];
    for (u64 s = 0; s < 9; s++)
        CHECK(blk_check_sector(d, 1, s, why, sizeof(why)) == 0, "%s", why);
}

static void readonly_features(void)
{
    CHECK(hv_ro.drv_features & BLK_F_RO, "RO not negotiated");
    CHECK_EQ(blk_capacity(&hv_ro), blk_capacity(&hv_blk), "capacity of the read-only disk");
    mmio_write32(hv_ro.devcfg, 0);
    mmio_write32(hv_ro.devcfg + 4, 0xffffffff);
    CHECK_EQ(blk_capacity(&hv_ro), blk_capacity(&hv_blk), "capacity after writes to it");
}

static const char disk_id[] = "hostile-rw";

static void get_id_short(void)
{
    memset(buf, 0xcc, 64);
    u32 used, st = req(&hv_blk, BLK_T_GET_ID, 0, 4, &used);
    CHECK(st == BLK_S_OK && used == 5, "status %x used %u", st, used);
    CHECK(!memcmp(buf, disk_id, 4) && buf[4] == 0xcc, "id bytes");
}

static void get_id_long(void)
{
    memset(buf, 0xcc, 64);
    u32 used, st = req(&hv_blk, BLK_T_GET_ID, 0, 64, &used);
    CHECK(st == BLK_S_OK && used == 21, "status %x used %u", st, used);
    CHECK(!memcmp(buf, disk_id, sizeof(disk_id) - 1), "id '%s'", (char *)buf);
    for (u32 i = sizeof(disk_id) - 1; i < 20; i++)
        CHECK(buf[i] == 0, "id padding");
    CHECK(buf[20] == 0xcc, "wrote past the 20 id bytes");
}

static void get_id_no_buffer(void)
{
    u32 used, st = req(&hv_blk, BLK_T_GET_ID, 0, 0, &used);
    CHECK(st == BLK_S_OK && used == 1, "status %x used %u", st, used);
}

/* GET_ID with the buffer device-readable: wrong direction. */
static void get_id_readable(void)
{
    static struct blk_hdr h __attribute__((aligned(16)));
    static u8 s;
    h.type = BLK_T_GET_ID;
    s = 0xaa;
    struct vq *q = &hv_blk.vq[0];
    vq_desc(q, 0, (u32)&h, 16, VRING_DESC_F_NEXT, 1);
    vq_desc(q, 1, (u32)buf, 20, VRING_DESC_F_NEXT, 2);
    vq_desc(q, 2, (u32)&s, 1, VRING_DESC_F_WRITE, 0);
    s32 n = vq_run(&hv_blk, q, 0, WAIT_MS);
    CHECK(n == 1 && s == BLK_S_IOERR, "used %d status %x", n, s);
}

static void flush(void)
{
    EXPECT(&hv_blk, BLK_T_FLUSH, 0, 0, BLK_S_OK, "flush");
    EXPECT(&hv_ro, BLK_T_FLUSH, 0, 0, BLK_S_OK, "flush of the read-only disk");
}

/* DISCARD and WRITE_ZEROES with bad segments. */
static void discard_bad(void)
{
    struct vdev *d = &hv_blk;
    u32 *seg = (u32 *)buf;
    u64 cap = blk_capacity(d);
    memset(buf, 0, 64);
    seg[0] = SCRATCH, seg[2] = 8, seg[3] = 1;
    EXPECT(d, BLK_T_DISCARD, 0, 16, BLK_S_UNSUPP, "discard with the unmap flag");
    seg[3] = 0;
    EXPECT(d, BLK_T_DISCARD, 0, 32, BLK_S_IOERR, "two segments");
    EXPECT(d, BLK_T_DISCARD, 0, 8, BLK_S_IOERR, "half a segment");
    seg[2] = (1u << 21) + 1;
    EXPECT(d, BLK_T_DISCARD, 0, 16, BLK_S_IOERR, "more sectors than the limit");
    seg[0] = (u32)cap - 4, seg[2] = 8;
    EXPECT(d, BLK_T_DISCARD, 0, 16, BLK_S_IOERR, "discard across the end");
    seg[0] = 0xffffffff, seg[1] = 0xffffffff;
    EXPECT(d, BLK_T_DISCARD, 0, 16, BLK_S_IOERR, "discard at u64::MAX");
    seg[0] = SCRATCH, seg[1] = 0, seg[3] = 2;
    EXPECT(d, BLK_T_WRITE_ZEROES, 0, 16, BLK_S_UNSUPP, "write zeroes with unknown flags");
    seg[3] = 0;
    EXPECT(d, BLK_T_WRITE_ZEROES, 0, 16, BLK_S_OK, "valid write zeroes");
    u32 used;
    CHECK(req(d, BLK_T_IN, SCRATCH, 4096, &used) == BLK_S_OK, "read back");
    for (u32 i = 0; i < 4096; i++)
        CHECK(buf[i] == 0, "write zeroes left byte %u", i);
    char why[120];
    CHECK(blk_check_sector(d, 0, SCRATCH - 1, why, sizeof(why)) == 0, "neighbour: %s", why);
}

/* A write and a read back of scratch sectors, then the read of the whole
 * disk compared up to the scratch area. */
static void write_read_whole(void)
{
    struct vdev *d = &hv_blk;
    for (u32 i = 0; i < 4096; i++)
        buf[i] = (u8)(i * 31 + 7);
    EXPECT(d, BLK_T_OUT, SCRATCH + 16, 4096, BLK_S_OK, "write");
    memset(buf, 0, 4096);
    u32 used;
    CHECK(req(d, BLK_T_IN, SCRATCH + 16, 4096, &used) == BLK_S_OK && used == 4097, "read back");
    for (u32 i = 0; i < 4096; i++)
        CHECK(buf[i] == (u8)(i * 31 + 7), "read back byte %u", i);
    u32 len = (u32)blk_capacity(d) * SECTOR;
    u8 *all = dma_alloc(len, 4096);
    memset(all, 0xcc, len);
    u32 st = blk_request(d, BLK_T_IN, 0, all, len, &used);
    CHECK(st == BLK_S_OK && used == len + 1, "whole-disk read: status %x used %u", st, used);
    /* Three bytes of every sector below the scratch area. */
    for (u32 s = 0; s < SCRATCH; s++)
        for (u32 i = s * SECTOR; i < (s + 1) * SECTOR; i += 255)
            CHECK(all[i] == disk_pattern(0, i), "whole-disk byte %u", i);
}

static const struct hcase cases[] = {
    {"blk-sector-past-end", sector_past_end, D_BLK},
    {"blk-sector-huge", sector_huge, D_BLK},
    {"blk-unknown-type", unknown_type, D_BLK},
    {"blk-length-not-sectors", len_unaligned, D_BLK},
    {"blk-write-readonly-disk", write_readonly, D_RO},
    {"blk-readonly-config", readonly_features, D_RO | D_BLK},
    {"blk-get-id-short-buffer", get_id_short, D_BLK},
    {"blk-get-id-long-buffer", get_id_long, D_BLK},
    {"blk-get-id-no-buffer", get_id_no_buffer, D_BLK},
    {"blk-get-id-readable-buffer", get_id_readable, D_BLK},
    {"blk-flush", flush, D_BLK | D_RO},
    {"blk-discard-write-zeroes-bad", discard_bad, D_BLK},
    {"blk-write-read-whole-disk", write_read_whole, D_BLK},
};
HGROUP(hostile_blk, cases);
