/* mode=durable: disk durability under SIGKILL.
 *
 * Writes one sector at a time of the first disk, round robin over its
 * first `sectors=` sectors (default 64), each a record naming its sequence
 * number; after every `every=` writes (default 1..4, varying) it sends a
 * FLUSH and, once the device answers it OK, prints
 *   DURABLE ACK <seq>
 * meaning every write up to <seq> must be on the host file now. Runs until
 * the VMM is killed, or for `count=` writes, then prints DURABLE DONE.
 */
#include "pv.h"

#define RECORD_MAGIC 0x52445650u /* "PVDR" */

struct record {
    u32 magic;
    u32 sector;
    u64 seq;
    u8 fill[SECTOR - 16];
} PACKED;

static u32 number(const char *key, u32 dflt)
{
    char buf[16];
    if (cmdline_get(key, buf, sizeof(buf)) <= 0)
        return dflt;
    u32 v = 0;
    for (const char *p = buf; *p >= '0' && *p <= '9'; p++)
        v = v * 10 + (u32)(*p - '0');
    return v;
}

static void durable_main(const char *cmdline)
{
    (void)cmdline;
    struct vdev d;
    if (virtio_find(&d, "blk", VIRTIO_ID_BLOCK, 0) || vdev_init(&d, VIRTIO_F_VERSION_1, 0)) {
        printf("DURABLE ERROR no usable virtio-blk device\n");
        return;
    }
    u64 capacity = blk_capacity(&d);
    u32 sectors = number("sectors", 64);
    if (sectors == 0 || sectors > capacity)
        sectors = capacity > 64 ? 64 : (u32)capacity;
    u32 count = number("count", 0);
    u32 every = number("every", 0);
    struct record *r = dma_alloc(sizeof(*r), 4096);
    printf("DURABLE READY sectors=%u\n", sectors);
    u32 since_flush = 0, batch = 1, sector = 0;
    for (u64 seq = 1; count == 0 || seq <= count; seq++) {
        /* seq % sectors without a 64-bit division (no libgcc here). */
        sector = sector + 1 == sectors ? 0 : sector + 1;
        r->magic = RECORD_MAGIC;
        r->sector = sector;
        r->seq = seq;
        for (u32 i = 0; i < sizeof(r->fill); i++)
            r->fill[i] = (u8)(seq * 31 + i);
        u32 used;
        u32 st = blk_request(&d, BLK_T_OUT, sector, r, SECTOR, &used);
        if (st != BLK_S_OK) {
            printf("DURABLE ERROR write %llu status %u\n", seq, st);
            return;
        }
        if (++since_flush < batch)
            continue;
        st = blk_request(&d, BLK_T_FLUSH, 0, NULL, 0, &used);
        if (st != BLK_S_OK) {
            printf("DURABLE ERROR flush after %llu status %u\n", seq, st);
            return;
        }
        printf("DURABLE ACK %llu\n", seq);
        since_flush = 0;
        batch = every ? every : 1 + (u32)(seq % 4);
    }
    printf("DURABLE DONE\n");
}
PV_MODE("durable", durable_main);
