/* Hostile cases: PCI configuration space and MSI-X. */
#include "hostile.h"

#define BAR_SIZE 0x8000u

static struct vdev *const all[] = {&hv_blk, &hv_ro, &hv_gpu, &hv_rng};

/* BAR sizing as firmware does it: all ones, read the mask, restore. */
static void bar_sizing(void)
{
    for (u32 i = 0; i < ARRAY_SIZE(all); i++) {
        u8 s = (u8)all[i]->slot;
        u32 orig = pci_read32(s, 0x10);
        pci_write32(s, 0x10, 0xffffffff);
        CHECK_EQ(pci_read32(s, 0x10), ~(BAR_SIZE - 1), "BAR0 size mask");
        pci_write32(s, 0x10, orig);
        CHECK_EQ(pci_read32(s, 0x10), orig, "BAR0 restored");
        /* BAR 1 is not implemented: it sizes as 0. */
        pci_write32(s, 0x14, 0xffffffff);
        CHECK_EQ(pci_read32(s, 0x14), 0, "BAR1 (absent) after all ones");
    }
    /* The GPU's BAR 2 (shared memory, 64-bit, only with 3D): one half at
     * a time, as Linux does; a 2D GPU has none. */
    u8 g = (u8)hv_gpu.slot;
    u32 lo = pci_read32(g, 0x18), hi = pci_read32(g, 0x1c);
    if (!lo && !hi) {
        pci_write32(g, 0x18, 0xffffffff);
        CHECK_EQ(pci_read32(g, 0x18), 0, "gpu BAR2 (absent) after all ones");
        return;
    }
    CHECK((lo & 0xf) == 0xc, "gpu BAR2 is not a 64-bit prefetchable BAR (%x)", lo);
    pci_write32(g, 0x18, 0xffffffff);
    CHECK((pci_read32(g, 0x18) & 0xf) == 0xc, "gpu BAR2 type bits changed while sizing");
    pci_write32(g, 0x18, lo);
    pci_write32(g, 0x1c, 0xffffffff);
    pci_write32(g, 0x1c, hi);
    CHECK_EQ(pci_read32(g, 0x18), lo, "gpu BAR2 low restored");
    CHECK_EQ(pci_read32(g, 0x1c), hi, "gpu BAR2 high restored");
}

/* The guest moves BAR 0 (through CF8) and back: PearVisor does not
 * relocate, the device keeps answering at its address. */
static void bar_move(void)
{
    u8 s = (u8)hv_rng.slot;
    u32 orig = cf8_read32(0, s, 0, 0x10);
    cf8_write32(0, s, 0, 0x10, orig + 0x100000);
    CHECK_EQ(cf8_read32(0, s, 0, 0x10), orig + 0x100000, "BAR0 reads the written address");
    cf8_write32(0, s, 0, 0x10, 0x12345678);
    CHECK_EQ(cf8_read32(0, s, 0, 0x10), 0x12345678 & ~(BAR_SIZE - 1), "BAR0 keeps its alignment");
    cf8_write32(0, s, 0, 0x10, orig);
    CHECK_EQ(cf8_read32(0, s, 0, 0x10), orig, "BAR0 restored");
}

/* IDs, class, subsystem, capability pointer and interrupt pin are read-only. */
static void ids_readonly(void)
{
    u8 s = (u8)hv_blk.slot;
    static const u16 regs[] = {0x00, 0x08, 0x2c, 0x34, 0x3c};
    u32 before[ARRAY_SIZE(regs)];
    for (u32 i = 0; i < ARRAY_SIZE(regs); i++)
        before[i] = pci_read32(s, regs[i]);
    for (u32 i = 0; i < ARRAY_SIZE(regs); i++) {
        pci_write32(s, regs[i], 0);
        cf8_write32(0, s, 0, (u8)regs[i], 0xffffffff);
        pci_write8(s, regs[i] + 1, 0x5a);
    }
    for (u32 i = 0; i < ARRAY_SIZE(regs); i++) {
        u32 now = pci_read32(s, regs[i]);
        /* Only the interrupt line (0x3c, low byte) is writable. */
        u32 mask = regs[i] == 0x3c ? 0xffffff00u : 0xffffffffu;
        CHECK((now & mask) == (before[i] & mask), "config %x changed: %x -> %x", regs[i],
              before[i], now);
    }
    pci_write8(s, 0x3c, (u8)before[4]);
}

/* Extended configuration space (0x100..0xfff) through ECAM: not there. */
static void ecam_extended(void)
{
    u8 s = (u8)hv_blk.slot;
    static const u16 offs[] = {0x100, 0x104, 0x400, 0x800, 0xffc};
    for (u32 i = 0; i < ARRAY_SIZE(offs); i++) {
        u32 v = pci_read32(s, offs[i]);
        CHECK(v == 0xffffffff || v == 0, "extended config %x reads %x", offs[i], v);
        pci_write32(s, offs[i], 0x12345678);
        CHECK_EQ(pci_read32(s, offs[i]), v, "extended config after a write");
        CHECK_EQ(pci_read8(s, offs[i] + 3), v >> 24, "extended config, one byte");
    }
    CHECK_EQ(pci_read32(s, 0), (u32)VIRTIO_ID_BLOCK << 16 | VIRTIO_VENDOR, "IDs after the writes");
}

/* Empty slots, other functions, other buses: all ones, writes dropped. */
static void absent_functions(void)
{
    u8 s = (u8)hv_blk.slot;
    CHECK_EQ(cf8_read32(0, 31, 0, 0), 0xffffffff, "CF8 empty slot 31");
    CHECK_EQ(mmio_read32(ecam_addr(0, 31, 0, 0)), 0xffffffff, "ECAM empty slot 31");
    for (u8 fn = 1; fn < 8; fn++) {
        cf8_write32(0, s, fn, 0x10, 0);
        mmio_write32(ecam_addr(0, s, fn, 0x04), 0xffff);
        CHECK_EQ(cf8_read32(0, s, fn, 0), 0xffffffff, "CF8 function 1-7");
        CHECK_EQ(mmio_read32(ecam_addr(0, s, fn, 0)), 0xffffffff, "ECAM function 1-7");
    }
    CHECK_EQ(cf8_read32(1, 0, 0, 0), 0xffffffff, "CF8 bus 1");
    CHECK_EQ(cf8_read32(255, s, 0, 0), 0xffffffff, "CF8 bus 255");
    /* ECAM covers bus 0 only: bus 1 is unassigned MMIO. */
    mmio_write32(ecam_addr(1, 0, 0, 0x10), 0);
    CHECK_EQ(mmio_read32(ecam_addr(1, 0, 0, 0)), 0xffffffff, "ECAM bus 1");
    CHECK_EQ(mmio_read32(ecam_addr(0xff, 31, 7, 0xffc)), 0xffffffff, "ECAM bus 255");
}

/* Sub-dword and unaligned configuration accesses. */
static void odd_widths(void)
{
    u8 s = (u8)hv_blk.slot;
    u32 id = pci_read32(s, 0);
    outl(0xcf8, cf8_addr(0, s, 0, 0));
    CHECK_EQ(inw(0xcfc), id & 0xffff, "CF8 16-bit vendor");
    CHECK_EQ(inw(0xcfe), id >> 16, "CF8 16-bit device");
    CHECK_EQ(inb(0xcff), id >> 24, "CF8 8-bit");
    CHECK_EQ(inw(0xcfd), 0xffff, "CF8 unaligned 16-bit");
    CHECK_EQ(inl(0xcfd), 0xffffffff, "CF8 32-bit read past the data port");
    CHECK_EQ(inb(0xcf9), (cf8_addr(0, s, 0, 0) >> 8) & 0xff, "CF8 address byte 1");
    outb(0xcf8, 0);      /* only 32-bit writes set the address */
    outw(0xcfa, 0x1234);
    CHECK_EQ(inl(0xcf8), cf8_addr(0, s, 0, 0), "CF8 address after narrow writes");
    u32 e = ecam_addr(0, s, 0, 0);
    CHECK_EQ(mmio_read16(e + 1), 0xffff, "ECAM unaligned 16-bit");
    CHECK_EQ(mmio_read32(e + 2), 0xffffffff, "ECAM unaligned 32-bit");
    CHECK_EQ(mmio_read8(e + 3), id >> 24, "ECAM 8-bit");
    u32 bar = pci_read32(s, 0x10);
    mmio_write32(ecam_addr(0, s, 0, 0x12), 0); /* straddles BAR0 and BAR1 */
    mmio_write16(ecam_addr(0, s, 0, 0x11), 0);
    CHECK_EQ(pci_read32(s, 0x10), bar, "BAR0 after unaligned writes");
}

/* CF8 without the enable bit selects nothing. */
static void cf8_disabled(void)
{
    u8 s = (u8)hv_blk.slot;
    outl(0xcf8, cf8_addr(0, s, 0, 0x10) & 0x7fffffff);
    CHECK_EQ(inl(0xcfc), 0xffffffff, "data with the enable bit clear");
    outl(0xcfc, 0);
    CHECK_EQ(inw(0xcfe), 0xffff, "16-bit data with the enable bit clear");
    CHECK_EQ(pci_read32(s, 0x10), hv_blk.bar, "BAR0 untouched");
}

/* Memory decoding and bus mastering off and back on; all ones into the
 * command register. */
static void command_register(void)
{
    struct vdev *ds[] = {&hv_blk, &hv_gpu};
    for (u32 i = 0; i < ARRAY_SIZE(ds); i++) {
        u8 s = (u8)ds[i]->slot;
        u16 cmd = pci_read16(s, 0x04);
        pci_write16(s, 0x04, 0);
        CHECK_EQ(pci_read16(s, 0x04), 0, "command after clearing it");
        pci_write16(s, 0x04, 0xffff);
        CHECK_EQ(pci_read16(s, 0x04), 0x0547, "command: only the writable bits stick");
        pci_write16(s, 0x04, cmd);
        CHECK_EQ(pci_read16(s, 0x04), cmd, "command restored");
    }
}

/* The status register's bits are not writable (no RW1C state to lose). */
static void status_register(void)
{
    u8 s = (u8)hv_blk.slot;
    u16 st = pci_read16(s, 0x06);
    pci_write16(s, 0x06, 0xffff);
    pci_write16(s, 0x06, 0);
    CHECK_EQ(pci_read16(s, 0x06), st, "status register");
    CHECK(st & (1 << 4), "capability list bit lost");
}

/* Garbage over the vendor capabilities: they are read-only. */
static void caps_readonly(void)
{
    u8 s = (u8)hv_blk.slot;
    static u32 before[48];
    for (u16 o = 0x40; o < 0x100; o += 4)
        before[(o - 0x40) / 4] = pci_read32(s, o);
    for (u8 pos = pci_find_cap(s, 0x09, 0); pos; pos = pci_find_cap(s, 0x09, pos)) {
        u8 len = pci_read8(s, pos + 2);
        for (u8 o = 2; o < len; o += 4) {
            pci_write32(s, (u16)((pos + o) & ~3), 0xffffffff);
            cf8_write32(0, s, 0, (u8)((pos + o) & ~3), 0);
        }
    }
    for (u16 o = 0x40; o < 0x100; o += 4)
        CHECK_EQ(pci_read32(s, o), before[(o - 0x40) / 4], "capability dword changed");
}

/* The host bridge: no BARs, read-only IDs. */
static void host_bridge(void)
{
    u32 id = pci_read32(0, 0);
    CHECK_EQ(id, 0x00081b36, "host bridge IDs");
    for (u16 o = 0x10; o < 0x28; o += 4) {
        pci_write32(0, o, 0xffffffff);
        CHECK_EQ(pci_read32(0, o), 0, "host bridge BAR sizes as absent");
    }
    pci_write32(0, 0, 0);
    CHECK_EQ(pci_read32(0, 0), id, "host bridge IDs after a write");
}

/* MSI-X message control: only enable and function mask are writable. */
static void msix_control(void)
{
    struct vdev *d = &hv_blk;
    u8 s = (u8)d->slot;
    u16 ctl = pci_read16(s, d->msix_cap + 2);
    pci_write16(s, d->msix_cap + 2, 0xffff);
    CHECK_EQ(pci_read16(s, d->msix_cap + 2), 0xc000 | (d->msix_vectors - 1),
             "message control after all ones");
    CHECK_EQ(pci_read32(s, d->msix_cap + 4) & ~7u, d->msix_table - d->bar, "table offset");
    pci_write32(s, d->msix_cap + 4, 0);
    pci_write32(s, d->msix_cap + 8, 0xffffffff);
    CHECK_EQ(pci_read32(s, d->msix_cap + 8) & ~7u, d->msix_pba - d->bar, "PBA offset after a write");
    pci_write16(s, d->msix_cap + 2, ctl);
}

static void msix_enable(struct vdev *d, int on, int fmask)
{
    u16 v = (on ? 0x8000 : 0) | (fmask ? 0x4000 : 0);
    pci_write16((u8)d->slot, d->msix_cap + 2, v);
}

static u32 msix_entry(struct vdev *d, u32 v, u32 field)
{
    return mmio_read32(d->msix_table + v * 16 + field * 4);
}

static void msix_set(struct vdev *d, u32 v, u32 addr_lo, u32 addr_hi, u32 data, u32 ctrl)
{
    u32 e = d->msix_table + v * 16;
    mmio_write32(e + 12, 1);
    mmio_write32(e, addr_lo);
    mmio_write32(e + 4, addr_hi);
    mmio_write32(e + 8, data);
    mmio_write32(e + 12, ctrl);
}

static u32 blk_read0(void)
{
    static u8 buf[512] __attribute__((aligned(512)));
    return blk_request(&hv_blk, BLK_T_IN, 0, buf, sizeof(buf), NULL);
}

/* Garbage addresses and data in the table (masked entries; nothing
 * fires them): stored as written, the device unaffected. */
static void msix_garbage(void)
{
    struct vdev *d = &hv_blk;
    msix_enable(d, 1, 0);
    msix_set(d, 0, 0xdeadbeef, 0xffffffff, 0x12345678, 1);
    msix_set(d, 1, 0x00000003, 0x80000000, 0xffffffff, 0xffffffff);
    CHECK_EQ(msix_entry(d, 0, 0), 0xdeadbeef, "entry 0 address");
    CHECK_EQ(msix_entry(d, 0, 1), 0xffffffff, "entry 0 upper address");
    CHECK_EQ(msix_entry(d, 0, 2), 0x12345678, "entry 0 data");
    CHECK_EQ(msix_entry(d, 1, 3), 1, "entry 1 control keeps only the mask bit");
    CHECK_EQ(blk_read0(), BLK_S_OK, "read with garbage MSI-X entries");
    msix_set(d, 0, 0, 0, 0, 1);
    msix_set(d, 1, 0, 0, 0, 1);
    msix_enable(d, 0, 0);
}

/* An unmasked vector aimed outside 0xfee00000 (fixed delivery, a vector the
 * guest never takes with interrupts off): requests complete, nothing is
 * left pending; masked, the bit shows in the PBA until unmasked. */
static void msix_fire(void)
{
    struct vdev *d = &hv_blk;
    msix_enable(d, 1, 0);
    msix_set(d, 1, 0x10000000, 0, 0x31, 0);
    mmio_write16(d->common + VCC_QSELECT, 0);
    mmio_write16(d->common + VCC_QMSIX, 1);
    CHECK_EQ(mmio_read16(d->common + VCC_QMSIX), 1, "queue vector");
    CHECK_EQ(blk_read0(), BLK_S_OK, "read with an unmasked vector");
    CHECK_EQ(mmio_read32(d->msix_pba) & 2, 0, "PBA after an unmasked interrupt");
    mmio_write32(d->msix_table + 16 + 12, 1);
    CHECK_EQ(blk_read0(), BLK_S_OK, "read with a masked vector");
    /* The worker raises the interrupt after it publishes the used entry
     * the guest already saw: wait for the bit rather than race it. */
    u64 until = now_ms() + 2000;
    while (!(mmio_read32(d->msix_pba) & 2) && now_ms() < until)
        cpu_relax();
    CHECK_EQ(mmio_read32(d->msix_pba) & 2, 2, "PBA bit of the masked vector");
    msix_enable(d, 1, 1);
    mmio_write32(d->msix_table + 16 + 12, 0);
    CHECK_EQ(mmio_read32(d->msix_pba) & 2, 2, "PBA bit under the function mask");
    msix_enable(d, 1, 0);
    CHECK_EQ(mmio_read32(d->msix_pba) & 2, 0, "PBA bit once delivered");
    mmio_write16(d->common + VCC_QMSIX, VIRTIO_NO_VECTOR);
    msix_set(d, 1, 0, 0, 0, 1);
    msix_enable(d, 0, 0);
}

/* Past the table, into the PBA, past the PBA. */
static void msix_past_table(void)
{
    struct vdev *d = &hv_blk;
    u32 end = d->msix_table + d->msix_vectors * 16;
    mmio_write32(end, 0xffffffff);
    mmio_write32(end + 12, 0);
    mmio_write32(d->bar + 0x5ffc, 0x12345678);
    CHECK_EQ(mmio_read32(end), 0xffffffff, "read past the table");
    CHECK_EQ(mmio_read32(d->bar + 0x5ff0), 0xffffffff, "read at the end of the table area");
    mmio_write32(d->msix_pba, 0xffffffff);
    CHECK_EQ(mmio_read32(d->msix_pba), 0, "PBA is read-only");
    CHECK_EQ(mmio_read32(d->msix_pba + 0x100), 0, "read past the PBA");
    CHECK_EQ(mmio_read32(d->bar + BAR_SIZE - 4), 0, "last dword of the BAR");
    CHECK_EQ(msix_entry(d, 0, 3), 1, "entry 0 still masked");
}

/* Narrow and unaligned table accesses are dropped. */
static void msix_odd_widths(void)
{
    struct vdev *d = &hv_blk;
    msix_set(d, 0, 0xfee00000, 0, 0x40, 1);
    mmio_write8(d->msix_table + 8, 0x55);
    mmio_write16(d->msix_table + 8, 0x5555);
    mmio_write32(d->msix_table + 2, 0x55555555);
    CHECK_EQ(msix_entry(d, 0, 2), 0x40, "data after narrow writes");
    CHECK_EQ(msix_entry(d, 0, 0), 0xfee00000, "address after an unaligned write");
    CHECK_EQ(mmio_read16(d->msix_table + 8), 0xffff, "16-bit table read");
    CHECK_EQ(mmio_read8(d->msix_table), 0xff, "8-bit table read");
    msix_set(d, 0, 0, 0, 0, 1);
}

/* Vectors beyond the table read back as NO_VECTOR. */
static void msix_vector_range(void)
{
    struct vdev *d = &hv_blk;
    mmio_write16(d->common + VCC_MSIX, 0x7ff);
    CHECK_EQ(mmio_read16(d->common + VCC_MSIX), VIRTIO_NO_VECTOR, "config vector 0x7ff");
    mmio_write16(d->common + VCC_QSELECT, 0);
    mmio_write16(d->common + VCC_QMSIX, d->msix_vectors);
    CHECK_EQ(mmio_read16(d->common + VCC_QMSIX), VIRTIO_NO_VECTOR, "queue vector one past");
    mmio_write16(d->common + VCC_QMSIX, 0x1234);
    CHECK_EQ(mmio_read16(d->common + VCC_QMSIX), VIRTIO_NO_VECTOR, "queue vector 0x1234");
}

static const struct hcase cases[] = {
    {"pci-bar-sizing", bar_sizing, D_ALL},
    {"pci-bar-move", bar_move, D_RNG},
    {"pci-ids-readonly", ids_readonly, D_BLK},
    {"pci-ecam-extended-space", ecam_extended, D_BLK},
    {"pci-absent-functions", absent_functions, D_BLK},
    {"pci-odd-widths", odd_widths, D_BLK},
    {"pci-cf8-disabled", cf8_disabled, D_BLK},
    {"pci-command-register", command_register, D_BLK | D_GPU},
    {"pci-status-register", status_register, D_BLK},
    {"pci-caps-readonly", caps_readonly, D_BLK},
    {"pci-host-bridge", host_bridge, D_BLK},
    {"msix-control", msix_control, D_BLK},
    {"msix-garbage-entries", msix_garbage, D_BLK},
    {"msix-vector-outside-lapic", msix_fire, D_BLK},
    {"msix-past-table", msix_past_table, D_BLK},
    {"msix-odd-widths", msix_odd_widths, D_BLK},
    {"msix-vector-range", msix_vector_range, D_BLK},
};
HGROUP(hostile_pci, cases);
