//! A type-0 PCI configuration header with BARs and a capability list.
//!
//! Registers are stored with a per-bit write mask, so BAR sizing (write all
//! ones, read back the size mask) and read-only fields follow from the masks.

/// Kinds of memory BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    Mem32,
    /// 64-bit, prefetchable (occupies two BAR registers).
    Mem64Prefetch,
}

const NUM_REGS: usize = 64;
const STATUS_CAP_LIST: u32 = 1 << 20;
const COMMAND_WRITABLE: u32 = 0x0547;
const CAP_POINTER_REG: usize = 0xd;
const FIRST_CAP_OFFSET: usize = 0x40;

/// 256 bytes of configuration space.
pub struct PciConfigSpace {
    regs: [u32; NUM_REGS],
    masks: [u32; NUM_REGS],
    last_cap: Option<usize>,
    next_cap: usize,
}

impl PciConfigSpace {
    /// A header with ids and a 24-bit class code (class/subclass/prog-if).
    pub fn new(vendor: u16, device: u16, class: u32, subsys_vendor: u16, subsys_id: u16) -> Self {
        let mut regs = [0u32; NUM_REGS];
        let mut masks = [0u32; NUM_REGS];
        regs[0] = (u32::from(device) << 16) | u32::from(vendor);
        masks[1] = COMMAND_WRITABLE;
        regs[2] = (class & 0xff_ffff) << 8;
        masks[3] = 0xff; // cache line size
        regs[0xb] = (u32::from(subsys_id) << 16) | u32::from(subsys_vendor);
        masks[0xf] = 0xff; // interrupt line
        Self {
            regs,
            masks,
            last_cap: None,
            next_cap: FIRST_CAP_OFFSET,
        }
    }

    /// Sets the revision id.
    pub fn set_revision(&mut self, rev: u8) {
        self.regs[2] = (self.regs[2] & !0xff) | u32::from(rev);
    }

    /// Declares BAR `index` of `size` bytes (a power of two) at `addr`.
    pub fn add_bar(&mut self, index: usize, addr: u64, size: u64, kind: BarKind) {
        debug_assert!(size.is_power_of_two() && size >= 16);
        let mask = !(size - 1);
        match kind {
            BarKind::Mem32 => {
                self.regs[4 + index] = addr as u32 & 0xffff_fff0;
                self.masks[4 + index] = mask as u32 & 0xffff_fff0;
            }
            BarKind::Mem64Prefetch => {
                self.regs[4 + index] = (addr as u32 & 0xffff_fff0) | 0b1100;
                self.masks[4 + index] = mask as u32 & 0xffff_fff0;
                self.regs[5 + index] = (addr >> 32) as u32;
                self.masks[5 + index] = (mask >> 32) as u32;
            }
        }
    }

    /// The address currently programmed in BAR `index`.
    pub fn bar_address(&self, index: usize, kind: BarKind) -> u64 {
        let low = u64::from(self.regs[4 + index] & 0xffff_fff0);
        match kind {
            BarKind::Mem32 => low,
            BarKind::Mem64Prefetch => low | (u64::from(self.regs[5 + index]) << 32),
        }
    }

    /// Whether the guest enabled memory decoding.
    pub fn memory_enabled(&self) -> bool {
        self.regs[1] & 0x2 != 0
    }

    /// Appends a capability (`body` starts after the id/next bytes); returns
    /// its offset. `writable` masks (same length as `body`) mark guest-writable bits.
    pub fn add_capability(&mut self, id: u8, body: &[u8], writable: &[u8]) -> usize {
        let offset = self.next_cap;
        let len = (2 + body.len()).div_ceil(4) * 4;
        assert!(offset + len <= NUM_REGS * 4, "PCI capabilities overflow");
        self.set_byte(offset, id, 0);
        self.set_byte(offset + 1, 0, 0);
        for (i, b) in body.iter().enumerate() {
            self.set_byte(offset + 2 + i, *b, writable.get(i).copied().unwrap_or(0));
        }
        match self.last_cap {
            Some(prev) => self.set_byte(prev + 1, offset as u8, 0),
            None => {
                self.regs[CAP_POINTER_REG] = offset as u32;
                self.regs[1] |= STATUS_CAP_LIST;
            }
        }
        self.last_cap = Some(offset);
        self.next_cap = offset + len;
        offset
    }

    fn set_byte(&mut self, offset: usize, value: u8, mask: u8) {
        let (reg, shift) = (offset / 4, (offset % 4) * 8);
        self.regs[reg] = (self.regs[reg] & !(0xff << shift)) | (u32::from(value) << shift);
        self.masks[reg] = (self.masks[reg] & !(0xff << shift)) | (u32::from(mask) << shift);
    }

    /// Reads register `reg`; out of range reads all ones.
    pub fn read_reg(&self, reg: usize) -> u32 {
        self.regs.get(reg).copied().unwrap_or(0xffff_ffff)
    }

    /// Reads `data.len()` bytes at byte offset `offset`.
    pub fn read_bytes(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let o = offset + i;
            *b = self
                .regs
                .get(o / 4)
                .map(|r| (r >> ((o % 4) * 8)) as u8)
                .unwrap_or(0xff);
        }
    }

    /// Masked write of `data` at byte `offset` of register `reg`.
    pub fn write(&mut self, reg: usize, offset: usize, data: &[u8]) {
        if reg >= NUM_REGS || offset.checked_add(data.len()).is_none_or(|end| end > 4) {
            return;
        }
        for (i, b) in data.iter().enumerate() {
            let shift = (offset + i) * 8;
            let mask = (self.masks[reg] >> shift) & 0xff;
            let old = (self.regs[reg] >> shift) & 0xff;
            let new = (old & !mask) | (u32::from(*b) & mask);
            self.regs[reg] = (self.regs[reg] & !(0xff << shift)) | (new << shift);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_read_only_and_command_is_writable() {
        let mut c = PciConfigSpace::new(0x1af4, 0x1041, 0x02_00_00, 0x1af4, 1);
        c.write(0, 0, &[0, 0, 0, 0]);
        assert_eq!(c.read_reg(0), 0x1041_1af4);
        c.write(1, 0, &[0xff, 0xff]);
        assert_eq!(c.read_reg(1) & 0xffff, COMMAND_WRITABLE);
        assert!(c.memory_enabled());
        assert_eq!(c.read_reg(64), 0xffff_ffff);
    }

    #[test]
    fn bar64_sizing_and_relocation() {
        let mut c = PciConfigSpace::new(1, 2, 0, 0, 0);
        c.add_bar(2, 0x10_0000_0000, 1 << 32, BarKind::Mem64Prefetch);
        assert_eq!(c.bar_address(2, BarKind::Mem64Prefetch), 0x10_0000_0000);
        c.write(6, 0, &[0xff; 4]);
        c.write(7, 0, &[0xff; 4]);
        assert_eq!(c.read_reg(6), 0b1100);
        assert_eq!(c.read_reg(7), 0xffff_ffff);
        c.write(6, 0, &0u32.to_le_bytes());
        c.write(7, 0, &0x20u32.to_le_bytes());
        assert_eq!(c.bar_address(2, BarKind::Mem64Prefetch), 0x20_0000_0000);
    }

    #[test]
    fn capabilities_chain() {
        let mut c = PciConfigSpace::new(1, 2, 0, 0, 0);
        let a = c.add_capability(0x11, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], &[0, 0xc0]);
        let b = c.add_capability(0x09, &[14, 1], &[]);
        assert_eq!(a, 0x40);
        assert_eq!(b, 0x4c);
        assert_ne!(c.read_reg(1) & STATUS_CAP_LIST, 0);
        assert_eq!(c.read_reg(CAP_POINTER_REG) & 0xff, 0x40);
        let mut hdr = [0u8; 2];
        c.read_bytes(a, &mut hdr);
        assert_eq!(hdr, [0x11, 0x4c]);
        c.read_bytes(b, &mut hdr);
        assert_eq!(hdr, [0x09, 0]);
        // Only the masked bits of the capability are writable.
        c.write(a / 4, 3, &[0xff]);
        let mut ctl = [0u8; 1];
        c.read_bytes(a + 3, &mut ctl);
        assert_eq!(ctl[0], 0xc0 | 2);
    }
}
