/* PCI configuration access: ECAM (bus 0 at 0xe0000000) and CF8/CFC. */
#include "pv.h"

u32 ecam_addr(u8 bus, u8 dev, u8 fn, u16 off)
{
    return PCI_ECAM_BASE + ((u32)bus << 20) + ((u32)(dev & 31) << 15) + ((u32)(fn & 7) << 12) +
           (off & 0xfff);
}

u32 pci_read32(u8 dev, u16 off) { return mmio_read32(ecam_addr(0, dev, 0, off)); }
u16 pci_read16(u8 dev, u16 off) { return mmio_read16(ecam_addr(0, dev, 0, off)); }
u8 pci_read8(u8 dev, u16 off) { return mmio_read8(ecam_addr(0, dev, 0, off)); }
void pci_write32(u8 dev, u16 off, u32 v) { mmio_write32(ecam_addr(0, dev, 0, off), v); }
void pci_write16(u8 dev, u16 off, u16 v) { mmio_write16(ecam_addr(0, dev, 0, off), v); }
void pci_write8(u8 dev, u16 off, u8 v) { mmio_write8(ecam_addr(0, dev, 0, off), v); }

u32 cf8_addr(u8 bus, u8 dev, u8 fn, u8 off)
{
    return 0x80000000u | ((u32)bus << 16) | ((u32)(dev & 31) << 11) | ((u32)(fn & 7) << 8) |
           (off & 0xfc);
}

u32 cf8_read32(u8 bus, u8 dev, u8 fn, u8 off)
{
    outl(0xcf8, cf8_addr(bus, dev, fn, off));
    return inl(0xcfc);
}

void cf8_write32(u8 bus, u8 dev, u8 fn, u8 off, u32 v)
{
    outl(0xcf8, cf8_addr(bus, dev, fn, off));
    outl(0xcfc, v);
}

int pci_find(u16 vendor, u16 device, int nth)
{
    for (int dev = 0; dev < 32; dev++) {
        u32 id = pci_read32((u8)dev, 0);
        if (id == ((u32)device << 16 | vendor) && nth-- == 0)
            return dev;
    }
    return -1;
}

u8 pci_find_cap(u8 dev, u8 id, u8 from)
{
    if (!(pci_read16(dev, 0x06) & (1 << 4)))
        return 0;
    u8 pos = from ? pci_read8(dev, from + 1) : pci_read8(dev, 0x34);
    /* A bounded walk: a looping list ends after 48 steps. */
    for (int i = 0; i < 48 && pos >= 0x40; i++) {
        if (pci_read8(dev, pos) == id)
            return pos;
        pos = pci_read8(dev, pos + 1);
    }
    return 0;
}
