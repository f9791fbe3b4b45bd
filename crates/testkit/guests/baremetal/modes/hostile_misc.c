/* Hostile cases: the serial port, the platform registers, unassigned port
 * I/O and MMIO, holes in the virtio BAR, device configuration writes. */
#include "hostile.h"

/* Garbage line control and divisor, every interrupt enabled, odd FIFO
 * and modem settings; then the usual setup, and this case's own line on
 * the console shows output still works. */
static void serial_garbage(void)
{
    outb(COM1 + 3, 0x80);
    outb(COM1 + 0, 0x00);
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0xbf);
    outb(COM1 + 1, 0xff);
    outb(COM1 + 3, 0x1f);
    outb(COM1 + 1, 0x0f);
    outb(COM1 + 2, 0xff);
    outb(COM1 + 4, 0x0f);
    for (u16 r = 0; r < 8; r++)
        (void)inb(COM1 + r);
    serial_init();
    CHECK(inb(COM1 + 5) & 0x20, "transmitter not empty after re-initialization");
}

/* Loopback: what is written comes back as input and never reaches the
 * console (the host test checks the marker is absent from the log); the
 * receive FIFO stays bounded. */
static void serial_loopback(void)
{
    static const char marker[] = "LOOPBACK-LEAK";
    while (inb(COM1 + 5) & 1)
        (void)inb(COM1);
    outb(COM1 + 4, 0x10);
    for (u32 i = 0; i < sizeof(marker) - 1; i++)
        outb(COM1, (u8)marker[i]);
    char got[sizeof(marker)] = {0};
    u32 n = 0;
    while ((inb(COM1 + 5) & 1) && n < sizeof(got) - 1)
        got[n++] = (char)inb(COM1);
    outb(COM1 + 4, 0x10);
    for (u32 i = 0; i < 1000; i++)
        outb(COM1, (u8)('a' + i % 26));
    u32 drained = 0;
    while ((inb(COM1 + 5) & 1) && drained < 10000) {
        (void)inb(COM1);
        drained++;
    }
    outb(COM1 + 4, 0x03);
    CHECK(n == sizeof(marker) - 1 && !memcmp(got, marker, n), "loopback gave %u bytes '%s'", n,
          got);
    CHECK(drained > 0 && drained <= 64, "receive FIFO held %u bytes", drained);
}

/* Port widths the UART doesn't have, and the scratch register. */
static void serial_odd_accesses(void)
{
    CHECK_EQ(inw(COM1), 0xffff, "16-bit read");
    CHECK_EQ(inl(COM1 + 4), 0xffffffff, "32-bit read");
    CHECK_EQ(inl(COM1 + 6), 0xffffffff, "32-bit read past the UART");
    outb(COM1 + 7, 0x5a);
    CHECK_EQ(inb(COM1 + 7), 0x5a, "scratch register");
}

/* Sleep types other than S5, S5 without SLP_EN: nothing happens (this
 * guest is still here to print the line). */
static void platform_sleep(void)
{
    static const u8 types[] = {0, 1, 2, 3, 4, 6, 7};
    for (u32 i = 0; i < ARRAY_SIZE(types); i++)
        outb(0x600, (u8)(types[i] << 2 | 0x20));
    outb(0x600, 5 << 2);
    outb(0x600, 0xff & ~0x20);
    CHECK_EQ(inb(0x601), 0x80, "sleep status (WAK_STS)");
    outb(0x601, 0xff);
    CHECK_EQ(inb(0x600), 0, "sleep control reads 0");
}

/* Reset register values other than the FADT's: nothing happens. */
static void platform_reset_values(void)
{
    static const u8 v[] = {0x00, 0x02, 0x06, 0x0e, 0xfe, 0xff};
    for (u32 i = 0; i < ARRAY_SIZE(v); i++)
        outb(0x602, v[i]);
    outw(0x602, 0x0101 & 0xff00);
    CHECK_EQ(inb(0x602), 0, "reset register reads 0");
}

static void platform_ged_and_i8042(void)
{
    CHECK_EQ(inb(0x604), 0, "GED without a power button press");
    outb(0x604, 0xff);
    CHECK_EQ(inb(0x604), 0, "GED after a write");
    CHECK_EQ(inb(0x64), 0, "i8042 status");
    static const u8 v[] = {0x00, 0xaa, 0xad, 0xd1, 0xff};
    for (u32 i = 0; i < ARRAY_SIZE(v); i++)
        outb(0x64, v[i]);
    CHECK_EQ(inb(0x60), 0xff, "i8042 data port is not there");
}

/* Ports nothing claims read all ones; writes vanish. */
static void io_unassigned(void)
{
    static const u16 ports[] = {0x80, 0x2f8, 0x3e8, 0x1234, 0x605, 0xcf0, 0xd00, 0xfff0};
    for (u32 i = 0; i < ARRAY_SIZE(ports); i++) {
        outb(ports[i], 0x55);
        outw(ports[i], 0x5555);
        outl(ports[i], 0x55555555);
        CHECK(inb(ports[i]) == 0xff, "port %x 8-bit", ports[i]);
        CHECK(inw(ports[i]) == 0xffff, "port %x 16-bit", ports[i]);
        CHECK(inl(ports[i]) == 0xffffffff, "port %x 32-bit", ports[i]);
    }
    /* Straddling a device's range: unclaimed as a whole. */
    CHECK_EQ(inl(0x603), 0xffffffff, "32-bit read across the end of the ACPI registers");
    CHECK_EQ(inw(0x3ff), 0xffff, "16-bit read across the end of COM1");
}

/* Physical addresses nothing claims read all ones; writes vanish. */
static void mmio_unassigned(void)
{
    const u32 addrs[] = {ram_top,    ABOVE_RAM,   0xbffff000, 0xc8000000,
                         0xd0000000, 0xe0100000, 0xe0fffffc, 0xfeb00000};
    for (u32 i = 0; i < ARRAY_SIZE(addrs); i++) {
        mmio_write32(addrs[i], 0x55555555);
        mmio_write8(addrs[i], 0x55);
        CHECK(mmio_read32(addrs[i]) == 0xffffffff, "%x 32-bit", addrs[i]);
        CHECK(mmio_read16(addrs[i]) == 0xffff, "%x 16-bit", addrs[i]);
        CHECK(mmio_read8(addrs[i]) == 0xff, "%x 8-bit", addrs[i]);
    }
}

/* Holes inside a virtio BAR read 0 and ignore writes. */
static void bar_holes(void)
{
    struct vdev *d = &hv_blk;
    static const u32 offs[] = {0x40, 0x800, 0x1004, 0x1ffc, 0x2000 + 60, 0x2ffc, 0x3ffc};
    for (u32 i = 0; i < ARRAY_SIZE(offs); i++) {
        mmio_write32(d->bar + offs[i], 0xffffffff);
        CHECK(mmio_read32(d->bar + offs[i]) == 0, "BAR offset %x", offs[i]);
    }
}

/* Device configuration is read-only where the spec says so. */
static void devcfg_writes(void)
{
    u64 cap = blk_capacity(&hv_blk);
    for (u32 o = 0; o < 64; o += 4)
        mmio_write32(hv_blk.devcfg + o, 0);
    CHECK_EQ(blk_capacity(&hv_blk), cap, "disk capacity");
    CHECK_EQ(mmio_read32(hv_blk.devcfg + 20), 512, "block size");
    u32 scanouts = mmio_read32(hv_gpu.devcfg + 8);
    mmio_write32(hv_gpu.devcfg + 0, 0xffffffff);
    mmio_write32(hv_gpu.devcfg + 4, 0xffffffff);
    mmio_write32(hv_gpu.devcfg + 8, 0);
    CHECK_EQ(mmio_read32(hv_gpu.devcfg + 8), scanouts, "num_scanouts");
    CHECK_EQ(mmio_read32(hv_gpu.devcfg + 0), 0, "events_read");
    mmio_write32(hv_rng.devcfg, 0xffffffff);
    CHECK_EQ(mmio_read32(hv_rng.devcfg), 0, "rng has no configuration");
}

static const struct hcase cases[] = {
    {"serial-garbage-line-settings", serial_garbage, 0},
    {"serial-loopback", serial_loopback, 0},
    {"serial-odd-accesses", serial_odd_accesses, 0},
    {"platform-sleep-types", platform_sleep, 0},
    {"platform-reset-values", platform_reset_values, 0},
    {"platform-ged-i8042", platform_ged_and_i8042, 0},
    {"io-unassigned-ports", io_unassigned, 0},
    {"mmio-unassigned", mmio_unassigned, D_ALL},
    {"mmio-bar-holes", bar_holes, D_BLK},
    {"devcfg-writes", devcfg_writes, D_BLK | D_GPU | D_RNG},
};
HGROUP(hostile_misc, cases);
