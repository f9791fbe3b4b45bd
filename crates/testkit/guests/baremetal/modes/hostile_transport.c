/* Hostile cases: the virtio-pci common configuration, notifications,
 * ring placement, resets. */
#include "hostile.h"

#define CC(d, off) ((d)->common + (off))

static u8 rbuf[4096] __attribute__((aligned(4096)));

/* queue_select beyond the queues: every queue register reads 0 and
 * ignores writes; the real queue is untouched. */
static void queue_select_oob(void)
{
    struct vdev *d = &hv_blk;
    CHECK(vdev_begin(d) == 0 && vdev_features(d, std_features(d)) == 0, "setup");
    mmio_write16(CC(d, VCC_QSELECT), 0x1234);
    CHECK_EQ(mmio_read16(CC(d, VCC_QSELECT)), 0x1234, "queue_select reads back");
    CHECK_EQ(mmio_read16(CC(d, VCC_QSIZE)), 0, "queue_size of a missing queue");
    CHECK_EQ(mmio_read16(CC(d, VCC_QNOTIFYOFF)), 0, "queue_notify_off of a missing queue");
    CHECK_EQ(mmio_read16(CC(d, VCC_QMSIX)), VIRTIO_NO_VECTOR, "queue_msix_vector of a missing queue");
    mmio_write16(CC(d, VCC_QSIZE), 8);
    mmio_write64(CC(d, VCC_QDESC), 0x1000);
    mmio_write16(CC(d, VCC_QENABLE), 1);
    CHECK_EQ(mmio_read16(CC(d, VCC_QENABLE)), 0, "queue_enable of a missing queue");
    CHECK_EQ(mmio_read32(CC(d, VCC_QDESC)), 0, "queue_desc of a missing queue");
    mmio_write16(CC(d, VCC_QSELECT), 0xffff);
    mmio_write16(CC(d, VCC_QENABLE), 1);
    mmio_write16(CC(d, VCC_QSELECT), 0);
    CHECK_EQ(mmio_read16(CC(d, VCC_QSIZE)), 256, "queue 0 size");
    CHECK_EQ(mmio_read16(CC(d, VCC_QENABLE)), 0, "queue 0 enable");
    CHECK(vq_setup(d, 0, 0) == 0 && vdev_driver_ok(d) == 0, "setup after the writes");
}

/* Sizes that are 0, not powers of two, or above the maximum are ignored. */
static void queue_size_bad(void)
{
    struct vdev *d = &hv_blk;
    CHECK(vdev_begin(d) == 0 && vdev_features(d, std_features(d)) == 0, "setup");
    mmio_write16(CC(d, VCC_QSELECT), 0);
    static const u16 bad[] = {0, 3, 100, 255, 257, 512, 0x8000, 0xffff};
    for (u32 i = 0; i < ARRAY_SIZE(bad); i++) {
        mmio_write16(CC(d, VCC_QSIZE), bad[i]);
        CHECK(mmio_read16(CC(d, VCC_QSIZE)) == 256, "queue_size %u accepted", bad[i]);
    }
    CHECK(vq_setup(d, 0, 64) == 0, "a queue of 64");
    CHECK(vdev_driver_ok(d) == 0, "DRIVER_OK with 64 entries");
    char why[120];
    CHECK(blk_check_sector(d, 0, 1, why, sizeof(why)) == 0, "%s", why);
    REINIT(d);
}

/* A queue of one entry works. */
static void queue_size_one(void)
{
    struct vdev *d = &hv_rng;
    CHECK(vdev_init(d, std_features(d), 1) == 0, "init with size 1");
    for (int i = 0; i < 3; i++)
        CHECK(rng_read(d, rbuf, 32) == 32, "read %d on a queue of one", i);
    REINIT(d);
}

/* Feature selectors far out of range. */
static void feature_select_huge(void)
{
    struct vdev *d = &hv_blk;
    CHECK(vdev_begin(d) == 0, "setup");
    static const u32 sel[] = {2, 0x100, 0x80000000, 0xffffffff};
    for (u32 i = 0; i < ARRAY_SIZE(sel); i++) {
        mmio_write32(CC(d, VCC_DFSELECT), sel[i]);
        CHECK(mmio_read32(CC(d, VCC_DF)) == 0, "device features word %x not 0", sel[i]);
        mmio_write32(CC(d, VCC_GFSELECT), sel[i]);
        mmio_write32(CC(d, VCC_GF), 0xffffffff);
        CHECK(mmio_read32(CC(d, VCC_GF)) == 0, "driver features word %x not 0", sel[i]);
    }
    CHECK_EQ(vdev_read_features(d, 1), 0, "driver features after out-of-range writes");
    CHECK_EQ(vdev_read_features(d, 0), d->dev_features, "device features");
    REINIT(d);
}

/* All 64 feature bits accepted: the unknown ones are dropped, FEATURES_OK
 * sticks, and the device runs with everything it offered (EVENT_IDX too). */
static void features_unknown_bits(void)
{
    struct vdev *d = &hv_blk;
    CHECK(vdev_begin(d) == 0, "setup");
    mmio_write32(CC(d, VCC_GFSELECT), 0);
    mmio_write32(CC(d, VCC_GF), 0xffffffff);
    mmio_write32(CC(d, VCC_GFSELECT), 1);
    mmio_write32(CC(d, VCC_GF), 0xffffffff);
    CHECK_EQ(vdev_read_features(d, 1), d->dev_features, "driver features read back");
    vdev_set_status(d, VIRTIO_S_ACKNOWLEDGE | VIRTIO_S_DRIVER | VIRTIO_S_FEATURES_OK);
    CHECK(vdev_status(d) & VIRTIO_S_FEATURES_OK, "FEATURES_OK refused");
    CHECK(vq_setup(d, 0, 0) == 0 && vdev_driver_ok(d) == 0, "DRIVER_OK");
    char why[120];
    CHECK(blk_check_sector(d, 0, 2, why, sizeof(why)) == 0, "with every feature: %s", why);
    REINIT(d);
}

/* FEATURES_OK without VERSION_1 is refused. */
static void features_no_version1(void)
{
    struct vdev *d = &hv_rng;
    CHECK(vdev_begin(d) == 0, "setup");
    mmio_write32(CC(d, VCC_GFSELECT), 0);
    mmio_write32(CC(d, VCC_GF), (u32)d->dev_features);
    mmio_write32(CC(d, VCC_GFSELECT), 1);
    mmio_write32(CC(d, VCC_GF), 0);
    vdev_set_status(d, VIRTIO_S_ACKNOWLEDGE | VIRTIO_S_DRIVER | VIRTIO_S_FEATURES_OK);
    CHECK(!(vdev_status(d) & VIRTIO_S_FEATURES_OK), "FEATURES_OK accepted without VERSION_1");
    REINIT(d);
}

/* Feature writes after FEATURES_OK are ignored. */
static void features_after_ok(void)
{
    struct vdev *d = &hv_blk;
    CHECK(vdev_begin(d) == 0 && vdev_features(d, std_features(d)) == 0, "setup");
    u64 f = vdev_read_features(d, 1);
    mmio_write32(CC(d, VCC_GFSELECT), 0);
    mmio_write32(CC(d, VCC_GF), 0);
    mmio_write32(CC(d, VCC_GFSELECT), 1);
    mmio_write32(CC(d, VCC_GF), 0);
    CHECK_EQ(vdev_read_features(d, 1), f, "driver features after FEATURES_OK");
    CHECK(vq_setup(d, 0, 0) == 0 && vdev_driver_ok(d) == 0, "DRIVER_OK");
}

/* DRIVER_OK without FEATURES_OK: the device does not start. */
static void driver_ok_without_features_ok(void)
{
    struct vdev *d = &hv_rng;
    CHECK(vdev_begin(d) == 0, "setup");
    CHECK(vq_setup(d, 0, 0) == 0, "queue setup");
    vdev_set_status(d, VIRTIO_S_ACKNOWLEDGE | VIRTIO_S_DRIVER | VIRTIO_S_DRIVER_OK);
    struct vq *q = &d->vq[0];
    vq_desc(q, 0, (u32)rbuf, 16, VRING_DESC_F_WRITE, 0);
    vq_post(q, 0);
    vq_kick(d, q);
    CHECK(vq_wait(q, 1, 50, NULL) != 0, "a device without FEATURES_OK served a request");
    REINIT(d);
}

/* Writes to read-only registers. */
static void readonly_registers(void)
{
    struct vdev *d = &hv_blk;
    u64 df = vdev_read_features(d, 0);
    u8 gen = mmio_read8(CC(d, VCC_CFGGEN));
    mmio_write16(CC(d, VCC_NUMQ), 7);
    mmio_write8(CC(d, VCC_CFGGEN), (u8)(gen + 0x55));
    mmio_write16(CC(d, VCC_QSELECT), 0);
    mmio_write16(CC(d, VCC_QNOTIFYOFF), 9);
    mmio_write32(CC(d, VCC_DFSELECT), 0);
    mmio_write32(CC(d, VCC_DF), 0);
    CHECK_EQ(mmio_read16(CC(d, VCC_NUMQ)), 1, "num_queues");
    CHECK_EQ(mmio_read8(CC(d, VCC_CFGGEN)), gen, "config_generation");
    CHECK_EQ(mmio_read16(CC(d, VCC_QNOTIFYOFF)), 0, "queue_notify_off");
    CHECK_EQ(vdev_read_features(d, 0), df, "device features");
}

/* Accesses of the wrong width to the common configuration are ignored
 * (a 32-bit write of 0 over device_status must not reset the device). */
static void wrong_widths(void)
{
    struct vdev *d = &hv_blk;
    mmio_write16(CC(d, VCC_QSELECT), 0);
    CHECK_EQ(mmio_read32(CC(d, VCC_QSELECT)), 0, "32-bit read of queue_select");
    mmio_write8(CC(d, VCC_QSELECT), 5);
    CHECK_EQ(mmio_read16(CC(d, VCC_QSELECT)), 0, "queue_select after an 8-bit write");
    mmio_write32(CC(d, VCC_STATUS), 0);
    mmio_write16(CC(d, VCC_STATUS), 0);
    CHECK(vdev_status(d) & VIRTIO_S_DRIVER_OK, "a wide write reset the device");
    CHECK_EQ(mmio_read32(CC(d, 0x13)), 0, "unaligned 32-bit read");
    CHECK_EQ(mmio_read16(CC(d, VCC_CFGGEN)), 0, "16-bit read of config_generation");
    CHECK_EQ(mmio_read8(CC(d, VCC_QSIZE)), 0, "8-bit read of queue_size");
    mmio_write32(CC(d, VCC_DFSELECT), 0);
    mmio_write8(CC(d, VCC_DFSELECT), 1);
    mmio_write16(CC(d, VCC_DFSELECT), 1);
    CHECK_EQ(mmio_read32(CC(d, VCC_DFSELECT)), 0, "device_feature_select after narrow writes");
}

/* Queue configuration is frozen once the driver is running. */
static void queue_config_frozen(void)
{
    struct vdev *d = &hv_blk;
    mmio_write16(CC(d, VCC_QSELECT), 0);
    u32 desc = mmio_read32(CC(d, VCC_QDESC));
    mmio_write64(CC(d, VCC_QDESC), 0x100);
    mmio_write64(CC(d, VCC_QUSED), ABOVE_RAM);
    mmio_write16(CC(d, VCC_QSIZE), 16);
    mmio_write16(CC(d, VCC_QENABLE), 0);
    CHECK_EQ(mmio_read32(CC(d, VCC_QDESC)), desc, "queue_desc");
    CHECK_EQ(mmio_read32(CC(d, VCC_QUSED)), (u32)d->vq[0].used, "queue_used");
    CHECK_EQ(mmio_read16(CC(d, VCC_QSIZE)), d->vq[0].size, "queue_size");
    CHECK_EQ(mmio_read16(CC(d, VCC_QENABLE)), 1, "queue_enable");
}

/* A notification before DRIVER_OK is remembered: the request is served
 * when the device starts, not before. */
static void notify_before_driver_ok(void)
{
    struct vdev *d = &hv_rng;
    CHECK(vdev_begin(d) == 0 && vdev_features(d, std_features(d)) == 0, "setup");
    CHECK(vq_setup(d, 0, 0) == 0, "queue setup");
    struct vq *q = &d->vq[0];
    vq_desc(q, 0, (u32)rbuf, 32, VRING_DESC_F_WRITE, 0);
    vq_post(q, 0);
    vq_kick(d, q);
    CHECK(vq_wait(q, 1, 30, NULL) != 0, "served before DRIVER_OK");
    CHECK(vdev_driver_ok(d) == 0, "DRIVER_OK");
    struct vring_used_elem e;
    CHECK(vq_wait(q, 1, WAIT_MS, &e) == 0, "the early request was never served");
    CHECK_EQ(e.len, 32, "used length");
}

/* Notifications for queues that don't exist, and past the notify area. */
static void notify_missing_queue(void)
{
    struct vdev *d = &hv_blk;
    mmio_write16(d->notify_base + 4, 1);
    mmio_write16(d->notify_base + 4 * 200, 200);
    mmio_write32(d->bar + 0x3ffc, 0xffffffff);
    mmio_write8(d->vq[0].notify, 0);
    mmio_write32(d->vq[0].notify, 0xffff);
    CHECK_EQ(mmio_read32(d->vq[0].notify), 0, "notify area reads 0");
}

/* Brings d to FEATURES_OK with queue 0 at the usual rings, then lets
 * `bad` point one ring elsewhere; DRIVER_OK must answer NEEDS_RESET. */
static void bad_ring(struct vdev *d, u32 reg, u64 addr)
{
    CHECK(vdev_begin(d) == 0 && vdev_features(d, std_features(d)) == 0, "setup");
    CHECK(vq_setup(d, 0, 0) == 0, "queue setup");
    mmio_write16(CC(d, VCC_QSELECT), 0);
    mmio_write64(CC(d, reg), addr);
    vdev_set_status(d, vdev_status(d) | VIRTIO_S_DRIVER_OK);
    CHECK(vdev_status(d) & VIRTIO_S_NEEDS_RESET, "ring at %llx accepted (status %x)", addr,
          vdev_status(d));
    REINIT(d);
    hnote("DEVICE_NEEDS_RESET as it must, then a reset");
}

static void ring_outside_ram(void) { bad_ring(&hv_blk, VCC_QDESC, ABOVE_RAM); }
static void ring_in_mmio_hole(void) { bad_ring(&hv_blk, VCC_QUSED, hv_blk.bar); }
static void ring_in_ecam(void) { bad_ring(&hv_rng, VCC_QAVAIL, PCI_ECAM_BASE); }
static void ring_wraps(void) { bad_ring(&hv_blk, VCC_QDESC, 0xfffffffffffff000ull); }
static void ring_straddles_ram_end(void) { bad_ring(&hv_rng, VCC_QUSED, ram_top - 16); }

/* Misaligned ring addresses are ignored. */
static void ring_misaligned(void)
{
    struct vdev *d = &hv_blk;
    CHECK(vdev_begin(d) == 0 && vdev_features(d, std_features(d)) == 0, "setup");
    CHECK(vq_setup(d, 0, 0) == 0, "queue setup");
    struct vq *q = &d->vq[0];
    mmio_write32(CC(d, VCC_QDESC), (u32)q->desc + 8);
    mmio_write32(CC(d, VCC_QAVAIL), (u32)q->avail + 1);
    mmio_write32(CC(d, VCC_QUSED), (u32)q->used + 2);
    CHECK_EQ(mmio_read32(CC(d, VCC_QDESC)), (u32)q->desc, "queue_desc");
    CHECK_EQ(mmio_read32(CC(d, VCC_QAVAIL)), (u32)q->avail, "queue_avail");
    CHECK_EQ(mmio_read32(CC(d, VCC_QUSED)), (u32)q->used, "queue_used");
    CHECK(vdev_driver_ok(d) == 0, "DRIVER_OK");
}

/* All three rings at one address: the device runs on garbage, within
 * bounds, until the driver resets it. */
static void ring_overlap(void)
{
    struct vdev *d = &hv_rng;
    CHECK(vdev_begin(d) == 0 && vdev_features(d, std_features(d)) == 0, "setup");
    CHECK(vq_setup(d, 0, 0) == 0, "queue setup");
    struct vq *q = &d->vq[0];
    u32 at = (u32)q->desc;
    mmio_write16(CC(d, VCC_QSELECT), 0);
    mmio_write64(CC(d, VCC_QAVAIL), at);
    mmio_write64(CC(d, VCC_QUSED), at);
    CHECK(vdev_driver_ok(d) == 0, "DRIVER_OK");
    /* The buffer's address gets rewritten by the avail index (to 0x10000). */
    vq_desc(q, 0, 0x10000, 64, VRING_DESC_F_WRITE, 0);
    q->avail = (struct vring_avail *)at;
    q->used = (struct vring_used *)at;
    vq_post(q, 0);
    vq_kick(d, q);
    delay_ms(20);
    REINIT(d);
    hnote("the driver resets after corrupting its rings");
}

/* A reset while a 1 MiB read is in flight. */
static void reset_mid_request_blk(void)
{
    struct vdev *d = &hv_blk;
    u32 len = 1 << 20;
    u8 *buf = dma_alloc(len, 4096);
    static struct blk_hdr h __attribute__((aligned(16)));
    static u8 st;
    h.type = BLK_T_IN;
    h.sector = 0;
    struct vq *q = &d->vq[0];
    for (u16 i = 0; i < 8; i++) {
        vq_desc(q, 3 * i, (u32)&h, 16, VRING_DESC_F_NEXT, 3 * i + 1);
        vq_desc(q, 3 * i + 1, (u32)buf, len, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 3 * i + 2);
        vq_desc(q, 3 * i + 2, (u32)&st, 1, VRING_DESC_F_WRITE, 0);
        vq_post(q, 3 * i);
    }
    vq_kick(d, q);
    CHECK(vdev_reset(d) == 0, "reset did not complete");
    REINIT(d);
}

/* A reset while a 4 MiB transfer is queued: the resource is gone after. */
static void reset_mid_request_gpu(void)
{
    struct vdev *d = &hv_gpu;
    u32 w = 1024, h = 1024, len = w * h * 4;
    u8 *buf = dma_alloc(len, 4096);
    CHECK_EQ(gpu_create_2d(d, 77, GPU_FORMAT_B8G8R8X8, w, h), GPU_RESP_OK_NODATA, "create");
    struct gpu_mem_entry e = {(u32)buf, len, 0};
    CHECK_EQ(gpu_attach(d, 77, &e, 1), GPU_RESP_OK_NODATA, "attach");
    static u32 req[14] __attribute__((aligned(16)));
    static u8 resp[24];
    memset(req, 0, sizeof(req));
    req[0] = GPU_CMD_TRANSFER_TO_HOST_2D;
    req[6 + 2] = w, req[6 + 3] = h, req[6 + 6] = 77;
    struct vq *q = &d->vq[GPU_CTRLQ];
    for (u16 i = 0; i < 16; i++) {
        vq_desc(q, 2 * i, (u32)req, 56, VRING_DESC_F_NEXT, 2 * i + 1);
        vq_desc(q, 2 * i + 1, (u32)resp, 24, VRING_DESC_F_WRITE, 0);
        vq_post(q, 2 * i);
    }
    vq_kick(d, q);
    CHECK(vdev_reset(d) == 0, "reset did not complete");
    REINIT(d);
    CHECK_EQ(gpu_flush(d, 77, 0, 0, 1, 1), GPU_RESP_ERR_INVALID_RESOURCE_ID,
             "resource after the reset");
    /* Once more with the resource on the screen. */
    CHECK_EQ(gpu_create_2d(d, 78, GPU_FORMAT_B8G8R8X8, 64, 64), GPU_RESP_OK_NODATA, "create");
    CHECK_EQ(gpu_set_scanout(d, 0, 78, 0, 0, 64, 64), GPU_RESP_OK_NODATA, "show");
    CHECK(vdev_reset(d) == 0, "reset did not complete");
    REINIT(d);
    CHECK_EQ(gpu_flush(d, 78, 0, 0, 1, 1), GPU_RESP_ERR_INVALID_RESOURCE_ID,
             "shown resource after the reset");
}

/* A reset with a queue full of looping chains. */
static void reset_with_loops(void)
{
    struct vdev *d = &hv_blk;
    static struct blk_hdr h __attribute__((aligned(16)));
    struct vq *q = &d->vq[0];
    for (u16 i = 0; i < q->size; i++) {
        vq_desc(q, i, (u32)&h, 16, VRING_DESC_F_NEXT, (u16)((i + 1) % q->size));
        vq_post(q, i);
    }
    vq_kick(d, q);
    CHECK(vdev_reset(d) == 0, "reset did not complete");
    REINIT(d);
}

/* A reset while the RNG fills a queue of 64 KiB requests. */
static void reset_mid_request_rng(void)
{
    struct vdev *d = &hv_rng;
    u8 *buf = dma_alloc(64 << 10, 4096);
    struct vq *q = &d->vq[0];
    for (u16 i = 0; i < q->size; i++) {
        vq_desc(q, i, (u32)buf, 64 << 10, VRING_DESC_F_WRITE, 0);
        vq_post(q, i);
    }
    vq_kick(d, q);
    CHECK(vdev_reset(d) == 0, "reset did not complete");
    REINIT(d);
}

/* Only the GPU's control queue enabled: it works; kicks of the cursor
 * queue (never set up) go nowhere. */
static void queue_not_enabled(void)
{
    struct vdev *d = &hv_gpu;
    CHECK(vdev_begin(d) == 0 && vdev_features(d, std_features(d)) == 0, "setup");
    CHECK(vq_setup(d, GPU_CTRLQ, 0) == 0, "control queue");
    CHECK(vdev_driver_ok(d) == 0, "DRIVER_OK with one of two queues");
    mmio_write16(d->notify_base + GPU_CURSORQ * d->notify_mult, GPU_CURSORQ);
    u32 w = 0, h = 0;
    CHECK_EQ(gpu_display_info(d, &w, &h), GPU_RESP_OK_DISPLAY_INFO, "control queue");
    REINIT(d);
}

/* The driver leaves DRIVER_OK, moves a running queue's rings outside RAM
 * and sets DRIVER_OK again: no second activation; the device goes on with
 * the rings it started with. */
static void requeue_while_running(void)
{
    struct vdev *d = &hv_blk;
    u8 s = vdev_status(d);
    vdev_set_status(d, VIRTIO_S_ACKNOWLEDGE | VIRTIO_S_DRIVER | VIRTIO_S_FEATURES_OK);
    mmio_write16(CC(d, VCC_QSELECT), 0);
    mmio_write64(CC(d, VCC_QDESC), ABOVE_RAM);
    mmio_write16(CC(d, VCC_QSIZE), 16);
    vdev_set_status(d, s);
    CHECK_EQ(vdev_status(d), s, "status");
    char why[120];
    CHECK(blk_check_sector(d, 0, 11, why, sizeof(why)) == 0, "%s", why);
}

/* Resets and initializations in a row: 50 of the RNG, 20 of the GPU
 * (each activation starts a device thread, each reset ends it; the host
 * test watches the VMM's thread count). */
static void reset_storm(void)
{
    struct vdev *d = &hv_rng;
    for (int i = 0; i < 50; i++) {
        int r = reinit(d);
        CHECK(r == 0, "init %d failed (step %d)", i, r);
        CHECK(rng_read(d, rbuf, 16) == 16, "read after init %d", i);
    }
    for (int i = 0; i < 20; i++) {
        int r = reinit(&hv_gpu);
        CHECK(r == 0, "gpu init %d failed (step %d)", i, r);
        CHECK_EQ(gpu_display_info(&hv_gpu, NULL, NULL), GPU_RESP_OK_DISPLAY_INFO, "gpu answer");
    }
}

/* FAILED, DRIVER_OK again, and a status rewritten without DRIVER_OK:
 * no second activation, no NEEDS_RESET. */
static void status_rewrites(void)
{
    struct vdev *d = &hv_rng;
    u8 s = vdev_status(d);
    vdev_set_status(d, s);
    vdev_set_status(d, VIRTIO_S_ACKNOWLEDGE);
    vdev_set_status(d, s);
    CHECK_EQ(vdev_status(d), s, "status after rewrites");
    CHECK(rng_read(d, rbuf, 16) == 16, "read after rewrites");
    vdev_set_status(d, s | VIRTIO_S_FAILED);
    CHECK(vdev_status(d) & VIRTIO_S_FAILED, "FAILED not kept");
    REINIT(d);
}

/* ISR status is read-to-clear and ignores writes. */
static void isr_status(void)
{
    struct vdev *d = &hv_blk;
    (void)mmio_read8(d->isr);
    static u8 buf[512] __attribute__((aligned(512)));
    CHECK_EQ(blk_request(d, BLK_T_IN, 0, buf, 512, NULL), BLK_S_OK, "read");
    /* The worker raises the interrupt (sets the bit) just after it
     * publishes the used entry the guest already saw; reading the ISR
     * would clear it, so give the worker time instead. */
    delay_ms(200);
    mmio_write8(d->isr, 0);
    CHECK_EQ(mmio_read8(d->isr) & 1, 1, "ISR queue bit after a request");
    CHECK_EQ(mmio_read8(d->isr), 0, "ISR after reading it");
    mmio_write32(d->isr, 0xffffffff);
    CHECK_EQ(mmio_read32(d->isr), 0, "ISR after a write");
}

static const struct hcase cases[] = {
    {"cc-queue-select-out-of-range", queue_select_oob, D_BLK},
    {"cc-queue-size-invalid", queue_size_bad, D_BLK},
    {"cc-queue-size-one", queue_size_one, D_RNG},
    {"cc-feature-select-huge", feature_select_huge, D_BLK},
    {"cc-features-unknown-bits", features_unknown_bits, D_BLK},
    {"cc-features-ok-without-version-1", features_no_version1, D_RNG},
    {"cc-features-after-features-ok", features_after_ok, D_BLK},
    {"cc-driver-ok-without-features-ok", driver_ok_without_features_ok, D_RNG},
    {"cc-readonly-registers", readonly_registers, D_BLK},
    {"cc-wrong-widths", wrong_widths, D_BLK},
    {"cc-queue-config-frozen", queue_config_frozen, D_BLK},
    {"cc-notify-before-driver-ok", notify_before_driver_ok, D_RNG},
    {"cc-notify-missing-queue", notify_missing_queue, D_BLK},
    {"cc-ring-outside-ram", ring_outside_ram, D_BLK},
    {"cc-ring-in-mmio-hole", ring_in_mmio_hole, D_BLK},
    {"cc-ring-in-ecam", ring_in_ecam, D_RNG},
    {"cc-ring-wraps-u64", ring_wraps, D_BLK},
    {"cc-ring-straddles-ram-end", ring_straddles_ram_end, D_RNG},
    {"cc-ring-misaligned", ring_misaligned, D_BLK},
    {"cc-rings-overlap", ring_overlap, D_RNG},
    {"cc-reset-mid-request-blk", reset_mid_request_blk, D_BLK},
    {"cc-reset-mid-request-gpu", reset_mid_request_gpu, D_GPU},
    {"cc-reset-mid-request-rng", reset_mid_request_rng, D_RNG},
    {"cc-reset-with-looping-chains", reset_with_loops, D_BLK},
    {"cc-queue-not-enabled", queue_not_enabled, D_GPU},
    {"cc-requeue-while-running", requeue_while_running, D_BLK},
    {"cc-reset-storm", reset_storm, D_RNG | D_GPU},
    {"cc-status-rewrites", status_rewrites, D_RNG},
    {"cc-isr-status", isr_status, D_BLK},
};
HGROUP(hostile_transport, cases);
