/* Hostile cases: virtio-input, the keyboard and the tablet (present with a
 * display that takes input). The configuration space (select, subsel,
 * size), the event queue (no host input arrives during the run, so posted
 * event buffers must stay unused whatever they look like) and the status
 * queue (LED events: read and ignored, every chain used with length 0). */
#include "hostile.h"

#define CFG(d, o) ((d)->devcfg + (o))
#define CC(d, off) ((d)->common + (off))
#define EVENTQ 0
#define STATUSQ 1

#define CFG_ID_NAME 0x01
#define CFG_ID_SERIAL 0x02
#define CFG_ID_DEVIDS 0x03
#define CFG_PROP_BITS 0x10
#define CFG_EV_BITS 0x11
#define CFG_ABS_INFO 0x12
#define EV_KEY 0x01
#define EV_REL 0x02
#define EV_ABS 0x03
#define EV_LED 0x11
#define EV_REP 0x14
/* The union's end: select, subsel, size, reserved[5], u[128]. */
#define CFG_LEN 136

static struct vdev *const inputs[] = {&hv_kbd, &hv_tab};
static u8 buf[4096] __attribute__((aligned(4096)));

const char *input_name(struct vdev *d)
{
    return d == &hv_kbd ? "PearVisor Keyboard" : "PearVisor Tablet";
}

static void cfg_select(struct vdev *d, u8 sel, u8 sub)
{
    mmio_write8(CFG(d, 0), sel);
    mmio_write8(CFG(d, 1), sub);
}

static u8 cfg_size(struct vdev *d) { return mmio_read8(CFG(d, 2)); }

/* The size the device must report for (sel, subsel). */
static u8 want_size(struct vdev *d, u8 sel, u8 sub)
{
    int tab = d == &hv_tab;
    switch (sel) {
    case CFG_ID_NAME:
        return sub ? 0 : (u8)strlen(input_name(d));
    case CFG_ID_SERIAL:
        return sub ? 0 : 11; /* "pearvisor-0" */
    case CFG_ID_DEVIDS:
        return sub ? 0 : 8;
    case CFG_PROP_BITS:
        return !sub && tab ? 1 : 0; /* INPUT_PROP_DIRECT */
    case CFG_EV_BITS:
        if (!tab)
            return sub == EV_KEY ? 32 : sub == EV_REP ? 1 : 0;
        return sub == EV_KEY ? 35 : sub == EV_ABS ? 1 : sub == EV_REL ? 2 : 0;
    case CFG_ABS_INFO:
        return tab && sub <= 1 ? 20 : 0;
    default:
        return 0;
    }
}

/* Reads back the device's name through select 1; 0 or -1 with why. */
static int check_name(struct vdev *d, char *why, int len)
{
    const char *name = input_name(d);
    u32 n = strlen(name);
    cfg_select(d, CFG_ID_NAME, 0);
    u8 size = cfg_size(d);
    if (size != n) {
        snprintf(why, len, "%s: name size %u, want %u", d->name, size, n);
        return -1;
    }
    for (u32 i = 0; i < n; i++) {
        u8 c = mmio_read8(CFG(d, 8 + i));
        if (c != (u8)name[i]) {
            snprintf(why, len, "%s: name byte %u is %x, want %x", d->name, i, c, (u8)name[i]);
            return -1;
        }
    }
    return 0;
}

int input_health(struct vdev *d, char *why, int len)
{
    static u8 ev[4 * 8] __attribute__((aligned(16)));
    static u8 led[8] __attribute__((aligned(16)));
    int r = reinit(d);
    if (r) {
        snprintf(why, len, "%s: re-initialization failed (step %d)", d->name, r);
        return -1;
    }
    struct vq *eq = &d->vq[EVENTQ], *sq = &d->vq[STATUSQ];
    for (u16 i = 0; i < 4; i++) {
        vq_desc(eq, i, (u32)&ev[i * 8], 8, VRING_DESC_F_WRITE, 0);
        vq_post(eq, i);
    }
    vq_kick(d, eq);
    if (vq_wait(eq, 1, 20, NULL) == 0) {
        snprintf(why, len, "%s: an event arrived with no host input", d->name);
        return -1;
    }
    /* An LED event (EV_LED, LED_CAPSL, on) on the status queue. */
    memset(led, 0, sizeof(led));
    led[0] = EV_LED;
    led[2] = 1;
    led[4] = 1;
    vq_desc(sq, 0, (u32)led, 8, 0, 0);
    s32 got = vq_run(d, sq, 0, WAIT_MS);
    if (got != 0) {
        snprintf(why, len, "%s: a status event gave %d", d->name, got);
        return -1;
    }
    return check_name(d, why, len);
}

/* Selects and subselects the device doesn't have: size 0, the union all
 * zero; select and subsel read back as written. */
static void cfg_unknown_select(void)
{
    static const u8 sel[] = {0x00, 0x04, 0x05, 0x0f, 0x13, 0x14, 0x7f, 0x80, 0xfe, 0xff};
    static const u8 sub[] = {0x00, 0x01, 0x80, 0xff};
    static const u8 known_bad[][2] = {
        {CFG_ID_NAME, 1},   {CFG_ID_SERIAL, 0xff}, {CFG_ID_DEVIDS, 1},
        {CFG_PROP_BITS, 1}, {CFG_EV_BITS, 0},      {CFG_EV_BITS, 0xff},
        {CFG_EV_BITS, 0x15}, {CFG_ABS_INFO, 2},    {CFG_ABS_INFO, 0xff},
    };
    for (u32 k = 0; k < ARRAY_SIZE(inputs); k++) {
        struct vdev *d = inputs[k];
        for (u32 i = 0; i < ARRAY_SIZE(sel); i++) {
            for (u32 j = 0; j < ARRAY_SIZE(sub); j++) {
                cfg_select(d, sel[i], sub[j]);
                CHECK(cfg_size(d) == 0, "%s: select %x/%x: size %u", d->name, sel[i], sub[j],
                      cfg_size(d));
                CHECK(mmio_read32(CFG(d, 8)) == 0 && mmio_read8(CFG(d, CFG_LEN - 1)) == 0,
                      "%s: select %x/%x: union not zero", d->name, sel[i], sub[j]);
                CHECK(mmio_read8(CFG(d, 0)) == sel[i] && mmio_read8(CFG(d, 1)) == sub[j],
                      "%s: select %x/%x reads back %x/%x", d->name, sel[i], sub[j],
                      mmio_read8(CFG(d, 0)), mmio_read8(CFG(d, 1)));
            }
        }
        for (u32 i = 0; i < ARRAY_SIZE(known_bad); i++) {
            cfg_select(d, known_bad[i][0], known_bad[i][1]);
            CHECK(cfg_size(d) == 0, "%s: select %x/%x: size %u", d->name, known_bad[i][0],
                  known_bad[i][1], cfg_size(d));
        }
    }
    /* The keyboard has no properties and no absolute axes. */
    cfg_select(&hv_kbd, CFG_PROP_BITS, 0);
    CHECK_EQ(cfg_size(&hv_kbd), 0, "keyboard PROP_BITS size");
    cfg_select(&hv_kbd, CFG_ABS_INFO, 0);
    CHECK_EQ(cfg_size(&hv_kbd), 0, "keyboard ABS_INFO size");
}

/* Every select with subsel 0, and every subsel of EV_BITS and ABS_INFO:
 * the size is the defined one (0 where nothing is there). */
static void cfg_sweep(void)
{
    static const u8 sels[] = {CFG_EV_BITS, CFG_ABS_INFO};
    for (u32 k = 0; k < ARRAY_SIZE(inputs); k++) {
        struct vdev *d = inputs[k];
        for (u32 s = 0; s < 256; s++) {
            cfg_select(d, (u8)s, 0);
            u8 got = cfg_size(d), want = want_size(d, (u8)s, 0);
            CHECK(got == want, "%s: select %x: size %u, want %u", d->name, s, got, want);
        }
        for (u32 i = 0; i < ARRAY_SIZE(sels); i++) {
            for (u32 t = 0; t < 256; t++) {
                cfg_select(d, sels[i], (u8)t);
                u8 got = cfg_size(d), want = want_size(d, sels[i], (u8)t);
                CHECK(got == want, "%s: select %x/%x: size %u, want %u", d->name, sels[i], t,
                      got, want);
            }
        }
    }
}

/* 16- and 32-bit accesses, unaligned ones, and reads past the union. */
static void cfg_odd_widths(void)
{
    for (u32 k = 0; k < ARRAY_SIZE(inputs); k++) {
        struct vdev *d = inputs[k];
        u32 n = strlen(input_name(d));
        mmio_write16(CFG(d, 0), CFG_ID_NAME);
        CHECK_EQ(mmio_read32(CFG(d, 0)), CFG_ID_NAME | n << 16, "32-bit read of select/subsel/size");
        CHECK_EQ(mmio_read16(CFG(d, 1)), n << 8, "unaligned 16-bit read of subsel/size");
        CHECK_EQ(mmio_read32(CFG(d, 6)), 'P' << 16 | 'e' << 24, "32-bit read across reserved/union");
        CHECK_EQ(mmio_read32(CFG(d, CFG_LEN - 2)), 0, "32-bit read across the union's end");
        CHECK_EQ(mmio_read32(CFG(d, CFG_LEN)), 0, "read past the union");
        CHECK_EQ(mmio_read32(CFG(d, 0xffc)), 0, "read at the end of the config area");
        /* A 32-bit write sets select and subsel; the size byte stays the device's. */
        mmio_write32(CFG(d, 0), 0xffff0000u | CFG_ID_DEVIDS);
        CHECK_EQ(mmio_read8(CFG(d, 0)), CFG_ID_DEVIDS, "select after a 32-bit write");
        CHECK_EQ(cfg_size(d), 8, "DEVIDS size after a 32-bit write over the size");
        CHECK_EQ(mmio_read16(CFG(d, 8)), 0x06, "DEVIDS bustype (BUS_VIRTUAL)");
        CHECK_EQ(mmio_read16(CFG(d, 10)), VIRTIO_VENDOR, "DEVIDS vendor");
        /* Unaligned 16-bit write at 1: subsel, then the size byte (ignored). */
        mmio_write16(CFG(d, 1), 0xff01);
        CHECK_EQ(mmio_read8(CFG(d, 1)), 1, "subsel after an unaligned 16-bit write");
        CHECK_EQ(cfg_size(d), 0, "DEVIDS subsel 1 size");
        /* Unaligned 32-bit write at offset 1: subsel only. */
        mmio_write8(CFG(d, 0), CFG_EV_BITS);
        mmio_write32(CFG(d, 1), 0xffffff00u | EV_KEY);
        CHECK_EQ(mmio_read8(CFG(d, 1)), EV_KEY, "subsel after an unaligned 32-bit write");
        CHECK_EQ(cfg_size(d), want_size(d, CFG_EV_BITS, EV_KEY), "EV_BITS/EV_KEY size");
    }
}

/* Writes to the read-only bytes (size, reserved, the union, past it) are
 * ignored: the name reads back whole. */
static void cfg_readonly_writes(void)
{
    char why[120];
    for (u32 k = 0; k < ARRAY_SIZE(inputs); k++) {
        struct vdev *d = inputs[k];
        cfg_select(d, CFG_ID_NAME, 0);
        for (u32 o = 2; o < CFG_LEN; o++)
            mmio_write8(CFG(d, o), 0xff);
        for (u32 o = 8; o < CFG_LEN; o += 4)
            mmio_write32(CFG(d, o), 0xffffffff);
        mmio_write16(CFG(d, 2), 0);
        mmio_write32(CFG(d, CFG_LEN), 0xffffffff);
        mmio_write32(CFG(d, 0xffc), 0xffffffff);
        CHECK(check_name(d, why, sizeof(why)) == 0, "after the writes: %s", why);
        for (u32 o = 3; o < 8; o++)
            CHECK(mmio_read8(CFG(d, o)) == 0, "%s: reserved byte %u is %x", d->name, o,
                  mmio_read8(CFG(d, o)));
        CHECK_EQ(mmio_read32(CFG(d, CFG_LEN)), 0, "past the union after a write");
    }
}

/* Event buffers nobody could fill: too small, read-only, outside RAM,
 * straddling RAM's end, empty, looped, a head past the queue, an indirect
 * table outside RAM. With no host input the device uses none of them and
 * stays running. */
static void eventq_bad_buffers(void)
{
    for (u32 k = 0; k < ARRAY_SIZE(inputs); k++) {
        struct vdev *d = inputs[k];
        REINIT(d);
        struct vq *q = &d->vq[EVENTQ];
        vq_desc(q, 0, (u32)buf, 4, VRING_DESC_F_WRITE, 0);
        vq_desc(q, 1, (u32)buf, 8, 0, 0);
        vq_desc(q, 2, ABOVE_RAM, 8, VRING_DESC_F_WRITE, 0);
        vq_desc(q, 3, ram_top - 4, 8, VRING_DESC_F_WRITE, 0);
        vq_desc(q, 4, (u32)buf, 0, VRING_DESC_F_WRITE, 0);
        vq_desc(q, 5, (u32)buf, 4, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 6);
        vq_desc(q, 6, (u32)buf + 4, 4, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 5);
        vq_desc(q, 7, ABOVE_RAM, 16 * 64, VRING_DESC_F_INDIRECT, 0);
        vq_desc(q, 8, 0xfffffffffffffff8ull, 8, VRING_DESC_F_WRITE, 0);
        for (u16 i = 0; i <= 8; i++)
            vq_post(q, i);
        vq_post(q, 0xffff);
        vq_kick(d, q);
        CHECK(vq_wait(q, 1, 50, NULL) != 0, "%s: a bad event buffer was used with no input",
              d->name);
        u8 s = vdev_status(d);
        CHECK(!(s & VIRTIO_S_NEEDS_RESET) && (s & VIRTIO_S_DRIVER_OK),
              "%s: status %x after the buffers", d->name, s);
        REINIT(d);
    }
}

/* Status chains of every bad shape: each is used, with length 0, and a
 * device-writable one is not written; a head past the queue gets no used
 * entry and does not stop the chains after it. */
static void statusq_garbage(void)
{
    for (u32 k = 0; k < ARRAY_SIZE(inputs); k++) {
        struct vdev *d = inputs[k];
        REINIT(d);
        struct vq *q = &d->vq[STATUSQ];
        struct {
            const char *what;
            u64 addr;
            u32 len;
            u16 flags;
        } bad[] = {
            {"a huge length", 0x100000, 0xffffffff, 0},
            {"outside RAM", ABOVE_RAM, 8, 0},
            {"wrapping", 0xfffffffffffffffcull, 8, 0},
            {"empty", (u32)buf, 0, 0},
            {"device-writable", (u32)buf, 64, VRING_DESC_F_WRITE},
            {"an indirect table outside RAM", ABOVE_RAM, 16 * 1000, VRING_DESC_F_INDIRECT},
            {"an indirect table of 3 bytes", (u32)buf, 3, VRING_DESC_F_INDIRECT},
        };
        for (u32 i = 0; i < ARRAY_SIZE(bad); i++) {
            memset(buf, 0x5a, 64);
            vq_desc(q, 0, bad[i].addr, bad[i].len, bad[i].flags, 0);
            s32 got = vq_run(d, q, 0, WAIT_MS);
            CHECK(got == 0, "%s: status chain with %s: %d", d->name, bad[i].what, got);
            CHECK(buf[0] == 0x5a && buf[63] == 0x5a, "%s: status chain with %s was written",
                  d->name, bad[i].what);
        }
        /* A loop, and a chain through every descriptor. */
        vq_desc(q, 0, (u32)buf, 8, VRING_DESC_F_NEXT, 1);
        vq_desc(q, 1, (u32)buf, 8, VRING_DESC_F_NEXT, 0);
        CHECK(vq_run(d, q, 0, WAIT_MS) == 0, "%s: a looped status chain", d->name);
        for (u16 i = 0; i < q->size; i++)
            vq_desc(q, i, (u32)buf, 8, VRING_DESC_F_NEXT, (u16)((i + 1) % q->size));
        CHECK(vq_run(d, q, 0, WAIT_MS) == 0, "%s: a chain through the whole table", d->name);
        /* A head past the queue, then a good chain. */
        vq_desc(q, 2, (u32)buf, 8, 0, 0);
        vq_post(q, 0xffff);
        CHECK(vq_run(d, q, 2, WAIT_MS) == 0, "%s: the chain after a head past the queue",
              d->name);
        CHECK(vq_wait(q, 1, 20, NULL) != 0, "%s: a used entry for a head past the queue",
              d->name);
    }
}

/* A full status queue, twice around the ring: every chain used with 0. */
static void statusq_flood(void)
{
    for (u32 k = 0; k < ARRAY_SIZE(inputs); k++) {
        struct vdev *d = inputs[k];
        REINIT(d);
        struct vq *q = &d->vq[STATUSQ];
        static struct vring_used_elem used[VQ_MAX_SIZE];
        for (int round = 0; round < 2; round++) {
            for (u16 i = 0; i < q->size; i++) {
                vq_desc(q, i, (u32)buf + 8 * (i % 64), 8, 0, 0);
                vq_post(q, i);
            }
            vq_kick(d, q);
            CHECK(vq_wait(q, q->size, WAIT_MS, used) == 0, "%s: round %d: %u of %u used",
                  d->name, round, vq_pending(q), q->size);
            for (u16 i = 0; i < q->size; i++)
                CHECK(used[i].id == i && used[i].len == 0, "%s: used entry %u: id %u len %u",
                      d->name, i, used[i].id, used[i].len);
        }
    }
}

/* Notifications before DRIVER_OK do nothing; after DRIVER_OK the chain
 * posted earlier is served. */
static void notify_before_driver_ok(void)
{
    for (u32 k = 0; k < ARRAY_SIZE(inputs); k++) {
        struct vdev *d = inputs[k];
        CHECK(vdev_begin(d) == 0 && vdev_features(d, std_features(d)) == 0, "%s: setup",
              d->name);
        CHECK(vq_setup(d, EVENTQ, 0) == 0 && vq_setup(d, STATUSQ, 0) == 0, "%s: queues",
              d->name);
        struct vq *q = &d->vq[STATUSQ];
        vq_desc(q, 0, (u32)buf, 8, 0, 0);
        vq_post(q, 0);
        vq_kick(d, q);
        vq_kick(d, &d->vq[EVENTQ]);
        CHECK(vq_wait(q, 1, 50, NULL) != 0, "%s: served before DRIVER_OK", d->name);
        CHECK(vdev_driver_ok(d) == 0, "%s: DRIVER_OK", d->name);
        vq_kick(d, q);
        struct vring_used_elem e;
        CHECK(vq_wait(q, 1, WAIT_MS, &e) == 0, "%s: the early chain was not served", d->name);
        CHECK(e.id == 0 && e.len == 0, "%s: used id %u len %u", d->name, e.id, e.len);
    }
}

/* Notifications for queues the device doesn't have (2, 5, 255), in every
 * width, and queue 0's address with another queue's number: nothing
 * happens, the device keeps running. */
static void notify_missing_queue(void)
{
    for (u32 k = 0; k < ARRAY_SIZE(inputs); k++) {
        struct vdev *d = inputs[k];
        REINIT(d);
        mmio_write16(d->notify_base + 5 * d->notify_mult, 5);
        mmio_write32(d->notify_base + 2 * d->notify_mult, 2);
        mmio_write8(d->notify_base + 255 * d->notify_mult, 0xff);
        mmio_write16(d->vq[EVENTQ].notify, 5);
        mmio_write16(d->vq[STATUSQ].notify, 0xffff);
        mmio_write8(d->vq[STATUSQ].notify, 1);
        mmio_write32(d->vq[EVENTQ].notify, 5);
        mmio_write16(CC(d, VCC_QSELECT), 5);
        CHECK_EQ(mmio_read16(CC(d, VCC_QSIZE)), 0, "queue 5 size");
        mmio_write16(CC(d, VCC_QENABLE), 1);
        CHECK_EQ(mmio_read16(CC(d, VCC_QENABLE)), 0, "queue 5 enable");
        u8 s = vdev_status(d);
        CHECK(!(s & VIRTIO_S_NEEDS_RESET) && (s & VIRTIO_S_DRIVER_OK), "%s: status %x",
              d->name, s);
        CHECK(vq_pending(&d->vq[EVENTQ]) == 0, "%s: event used", d->name);
    }
}

/* Resets with event and status buffers posted, over and over: the device
 * stops at once (status reads 0), uses nothing afterwards, and comes back. */
static void reset_with_buffers(void)
{
    for (u32 k = 0; k < ARRAY_SIZE(inputs); k++) {
        struct vdev *d = inputs[k];
        for (int round = 0; round < 10; round++) {
            REINIT(d);
            struct vq *eq = &d->vq[EVENTQ], *sq = &d->vq[STATUSQ];
            for (u16 i = 0; i < 8; i++) {
                vq_desc(eq, i, (u32)buf + 8 * i, 8, VRING_DESC_F_WRITE, 0);
                vq_post(eq, i);
                vq_desc(sq, i, (u32)buf + 64 + 8 * i, 8, 0, 0);
                vq_post(sq, i);
            }
            vq_kick(d, eq);
            if (round & 1)
                vq_kick(d, sq);
            CHECK(vdev_reset(d) == 0, "%s: reset did not complete", d->name);
            u16 eseen = vq_pending(eq), sseen = vq_pending(sq);
            delay_ms(2);
            CHECK(vq_pending(eq) == eseen && vq_pending(sq) == sseen,
                  "%s: used entries after the reset", d->name);
            CHECK(eseen == 0, "%s: %u events with no input", d->name, eseen);
        }
    }
    for (u32 k = 0; k < ARRAY_SIZE(inputs); k++)
        REINIT(inputs[k]);
}

/* Rings outside RAM: DRIVER_OK answers NEEDS_RESET, a reset recovers. */
static void ring_outside_ram(void)
{
    static const u32 regs[] = {VCC_QDESC, VCC_QUSED};
    for (u32 k = 0; k < ARRAY_SIZE(inputs); k++) {
        struct vdev *d = inputs[k];
        CHECK(vdev_begin(d) == 0 && vdev_features(d, std_features(d)) == 0, "%s: setup",
              d->name);
        CHECK(vq_setup(d, EVENTQ, 0) == 0 && vq_setup(d, STATUSQ, 0) == 0, "%s: queues",
              d->name);
        mmio_write16(CC(d, VCC_QSELECT), k == 0 ? EVENTQ : STATUSQ);
        mmio_write64(CC(d, regs[k]), k == 0 ? ABOVE_RAM : ram_top - 16);
        vdev_set_status(d, vdev_status(d) | VIRTIO_S_DRIVER_OK);
        CHECK(vdev_status(d) & VIRTIO_S_NEEDS_RESET, "%s: ring accepted (status %x)", d->name,
              vdev_status(d));
        REINIT(d);
    }
    hnote("DEVICE_NEEDS_RESET as it must, then a reset");
}

/* Queues of one entry work (a status chain, an event buffer that stays). */
static void queue_size_one(void)
{
    for (u32 k = 0; k < ARRAY_SIZE(inputs); k++) {
        struct vdev *d = inputs[k];
        CHECK(vdev_init(d, std_features(d), 1) == 0, "%s: init with size 1", d->name);
        struct vq *eq = &d->vq[EVENTQ], *sq = &d->vq[STATUSQ];
        vq_desc(eq, 0, (u32)buf, 8, VRING_DESC_F_WRITE, 0);
        vq_post(eq, 0);
        vq_kick(d, eq);
        for (int i = 0; i < 3; i++) {
            vq_desc(sq, 0, (u32)buf + 8, 8, 0, 0);
            CHECK(vq_run(d, sq, 0, WAIT_MS) == 0, "%s: status %d on a queue of one", d->name,
                  i);
        }
        CHECK(vq_pending(eq) == 0, "%s: event used with no input", d->name);
        REINIT(d);
    }
}

static const struct hcase cases[] = {
    {"input-cfg-unknown-select", cfg_unknown_select, D_INPUT},
    {"input-cfg-sweep", cfg_sweep, D_INPUT},
    {"input-cfg-odd-widths", cfg_odd_widths, D_INPUT},
    {"input-cfg-readonly-writes", cfg_readonly_writes, D_INPUT},
    {"input-eventq-bad-buffers", eventq_bad_buffers, D_INPUT},
    {"input-statusq-garbage", statusq_garbage, D_INPUT},
    {"input-statusq-flood", statusq_flood, D_INPUT},
    {"input-notify-before-driver-ok", notify_before_driver_ok, D_INPUT},
    {"input-notify-missing-queue", notify_missing_queue, D_INPUT},
    {"input-reset-with-buffers", reset_with_buffers, D_INPUT},
    {"input-ring-outside-ram", ring_outside_ram, D_INPUT},
    {"input-queue-size-one", queue_size_one, D_INPUT},
};
HGROUP(hostile_input, cases);
