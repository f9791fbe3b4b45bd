/* virtio-blk: well-formed requests on queue 0. */
#include "pv.h"

static struct blk_hdr req_hdr __attribute__((aligned(16)));
static volatile u8 req_status __attribute__((aligned(16)));

u8 disk_pattern(int disk, u64 offset)
{
    /* The host writes the same bytes (tests/hostile_guest.rs). */
    u32 o = (u32)offset, s = (u32)(offset >> 9);
    return disk == 0 ? (u8)(o * 7 + s * 13 + 0x5a) : (u8)(o * 11 + s * 3 + 0xa5);
}

u32 blk_request(struct vdev *d, u32 type, u64 sector, void *buf, u32 len, u32 *used)
{
    struct vq *q = &d->vq[0];
    req_hdr.type = type;
    req_hdr.reserved = 0;
    req_hdr.sector = sector;
    req_status = 0xff;
    u16 dir = (type == BLK_T_IN || type == BLK_T_GET_ID) ? VRING_DESC_F_WRITE : 0;
    if (len) {
        vq_desc(q, 0, (u32)&req_hdr, sizeof(req_hdr), VRING_DESC_F_NEXT, 1);
        vq_desc(q, 1, (u32)buf, len, dir | VRING_DESC_F_NEXT, 2);
        vq_desc(q, 2, (u32)&req_status, 1, VRING_DESC_F_WRITE, 0);
    } else {
        vq_desc(q, 0, (u32)&req_hdr, sizeof(req_hdr), VRING_DESC_F_NEXT, 2);
        vq_desc(q, 2, (u32)&req_status, 1, VRING_DESC_F_WRITE, 0);
    }
    s32 n = vq_run(d, q, 0, WAIT_MS);
    if (used)
        *used = (u32)n;
    if (n < 0)
        return BLK_TIMEOUT;
    return req_status;
}

/* What sector `sector` of `disk` holds; sector 0 of each disk is kept. */
static const u8 *expected(int disk, u64 sector)
{
    static u8 zero[2][SECTOR], other[SECTOR];
    static int have[2];
    u8 *out = sector ? other : zero[disk];
    if (sector || !have[disk]) {
        for (u32 i = 0; i < SECTOR; i++)
            out[i] = disk_pattern(disk, sector * SECTOR + i);
        have[disk] |= !sector;
    }
    return out;
}

int blk_check_sector(struct vdev *d, int disk, u64 sector, char *why, int whylen)
{
    static u8 buf[SECTOR] __attribute__((aligned(SECTOR)));
    memset(buf, 0xee, SECTOR);
    u32 used = 0;
    u32 st = blk_request(d, BLK_T_IN, sector, buf, SECTOR, &used);
    if (st != BLK_S_OK || used != SECTOR + 1) {
        snprintf(why, whylen, "%s: read of sector %u: status %x used %u", d->name, (u32)sector,
                 st, used);
        return -1;
    }
    const u8 *want = expected(disk, sector);
    if (memcmp(buf, want, SECTOR)) {
        u32 i = 0;
        while (buf[i] == want[i])
            i++;
        snprintf(why, whylen, "%s: sector %u byte %u is %x, not %x", d->name, (u32)sector, i,
                 buf[i], want[i]);
        return -1;
    }
    return 0;
}

u64 blk_capacity(struct vdev *d) { return mmio_read64(d->devcfg); }
