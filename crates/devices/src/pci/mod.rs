//! PCI: configuration space, the root segment and its two access methods.
//!
//! One segment, bus 0. Configuration space is reached through the legacy
//! 0xCF8/0xCFC ports ([`PciConfigIo`]) and through ECAM MMIO
//! ([`PciConfigMmio`]); both land in [`PciSegment`], which routes to the
//! [`PciDevice`] in the addressed slot. Function numbers other than 0 read as
//! absent. BARs are assigned by the VMM at creation (the guest keeps them, as
//! Linux does when firmware left them inside the host bridge's windows).

pub mod config;
pub mod msix;

use std::sync::{Arc, Mutex};

pub use config::{BarKind, PciConfigSpace};

use crate::bus::BusDevice;

/// A device on the PCI bus.
pub trait PciDevice: Send {
    /// Reads the 32-bit configuration register `reg` (byte offset / 4).
    fn config_read(&mut self, reg: usize) -> u32;
    /// Writes `data` (1, 2 or 4 bytes) at byte `offset` within register `reg`.
    fn config_write(&mut self, reg: usize, offset: usize, data: &[u8]);
}

/// Slots on bus 0.
pub const PCI_SLOTS: usize = 32;

/// The host bridge in slot 0.
pub struct HostBridge {
    config: PciConfigSpace,
}

impl HostBridge {
    pub fn new() -> Self {
        // Red Hat's generic PCIe host bridge id; class 06/00/00.
        Self {
            config: PciConfigSpace::new(0x1b36, 0x0008, 0x06_00_00, 0, 0),
        }
    }
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciDevice for HostBridge {
    fn config_read(&mut self, reg: usize) -> u32 {
        self.config.read_reg(reg)
    }
    fn config_write(&mut self, reg: usize, offset: usize, data: &[u8]) {
        self.config.write(reg, offset, data);
    }
}

/// Errors from building the PCI segment.
#[derive(Debug, thiserror::Error)]
pub enum PciError {
    #[error("no free PCI slot (all {PCI_SLOTS} are used)")]
    NoSlot,
    #[error("the PCI MMIO window is full")]
    WindowFull,
}

/// Bus 0 with its devices.
pub struct PciSegment {
    slots: Vec<Option<Arc<Mutex<dyn PciDevice>>>>,
}

impl PciSegment {
    /// A segment with the host bridge in slot 0.
    pub fn new() -> Self {
        let mut slots: Vec<Option<Arc<Mutex<dyn PciDevice>>>> = vec![None; PCI_SLOTS];
        slots[0] = Some(Arc::new(Mutex::new(HostBridge::new())));
        Self { slots }
    }

    /// Adds a device in the first free slot; returns the slot number.
    pub fn add(&mut self, dev: Arc<Mutex<dyn PciDevice>>) -> Result<u8, PciError> {
        let slot = self
            .slots
            .iter()
            .position(|s| s.is_none())
            .ok_or(PciError::NoSlot)?;
        self.slots[slot] = Some(dev);
        Ok(slot as u8)
    }

    fn device(&self, bus: u8, dev: u8, func: u8) -> Option<&Arc<Mutex<dyn PciDevice>>> {
        if bus != 0 || func != 0 {
            return None;
        }
        self.slots.get(usize::from(dev))?.as_ref()
    }

    /// Reads register `reg` of bus/dev/func; absent devices read all ones.
    pub fn read(&self, bus: u8, dev: u8, func: u8, reg: usize) -> u32 {
        match self.device(bus, dev, func) {
            Some(d) => d.lock().unwrap_or_else(|e| e.into_inner()).config_read(reg),
            None => 0xffff_ffff,
        }
    }

    /// Writes register `reg` of bus/dev/func; absent devices ignore it.
    pub fn write(&self, bus: u8, dev: u8, func: u8, reg: usize, offset: usize, data: &[u8]) {
        if let Some(d) = self.device(bus, dev, func) {
            d.lock()
                .unwrap_or_else(|e| e.into_inner())
                .config_write(reg, offset, data);
        }
    }
}

impl Default for PciSegment {
    fn default() -> Self {
        Self::new()
    }
}

fn read_subword(value: u32, offset: usize, data: &mut [u8]) {
    let bytes = value.to_le_bytes();
    for (i, b) in data.iter_mut().enumerate() {
        *b = bytes.get(offset + i).copied().unwrap_or(0xff);
    }
}

fn valid_access(offset: usize, len: usize) -> bool {
    matches!(len, 1 | 2 | 4) && offset.is_multiple_of(len) && offset + len <= 4
}

/// Configuration mechanism #1: address at 0xCF8, data at 0xCFC-0xCFF.
pub struct PciConfigIo {
    segment: Arc<Mutex<PciSegment>>,
    address: u32,
}

impl PciConfigIo {
    pub fn new(segment: Arc<Mutex<PciSegment>>) -> Self {
        Self {
            segment,
            address: 0,
        }
    }

    fn target(&self) -> Option<(u8, u8, u8, usize)> {
        if self.address & 0x8000_0000 == 0 {
            return None;
        }
        let bus = ((self.address >> 16) & 0xff) as u8;
        let dev = ((self.address >> 11) & 0x1f) as u8;
        let func = ((self.address >> 8) & 0x7) as u8;
        let reg = ((self.address >> 2) & 0x3f) as usize;
        Some((bus, dev, func, reg))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let offset = offset as usize;
        if offset < 4 {
            read_subword(self.address, offset, data);
            return;
        }
        let sub = offset - 4;
        match self.target() {
            Some((bus, dev, func, reg)) if valid_access(sub, data.len()) => {
                let v = self
                    .segment
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .read(bus, dev, func, reg);
                read_subword(v, sub, data);
            }
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let offset = offset as usize;
        if offset == 0 && data.len() == 4 {
            self.address = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            return;
        }
        if offset < 4 {
            return;
        }
        let sub = offset - 4;
        if let Some((bus, dev, func, reg)) = self.target() {
            if valid_access(sub, data.len()) {
                self.segment
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write(bus, dev, func, reg, sub, data);
            }
        }
    }
}

/// ECAM: bus[27:20] dev[19:15] func[14:12] register[11:0].
pub struct PciConfigMmio {
    segment: Arc<Mutex<PciSegment>>,
}

impl PciConfigMmio {
    pub fn new(segment: Arc<Mutex<PciSegment>>) -> Self {
        Self { segment }
    }

    fn decode(offset: u64) -> (u8, u8, u8, usize, usize) {
        let bus = ((offset >> 20) & 0xff) as u8;
        let dev = ((offset >> 15) & 0x1f) as u8;
        let func = ((offset >> 12) & 0x7) as u8;
        let reg = ((offset & 0xfff) >> 2) as usize;
        (bus, dev, func, reg, (offset & 3) as usize)
    }
}

impl BusDevice for PciConfigMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let (bus, dev, func, reg, sub) = Self::decode(offset);
        if !valid_access(sub, data.len()) {
            data.fill(0xff);
            return;
        }
        let v = self
            .segment
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .read(bus, dev, func, reg);
        read_subword(v, sub, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (bus, dev, func, reg, sub) = Self::decode(offset);
        if valid_access(sub, data.len()) {
            self.segment
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .write(bus, dev, func, reg, sub, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment_with_device() -> Arc<Mutex<PciSegment>> {
        let mut seg = PciSegment::new();
        let mut cfg = PciConfigSpace::new(0x1af4, 0x1042, 0x01_80_00, 0x1af4, 0x1100);
        cfg.add_bar(0, 0xc000_0000, 0x4000, BarKind::Mem32);
        struct Dev(PciConfigSpace);
        impl PciDevice for Dev {
            fn config_read(&mut self, reg: usize) -> u32 {
                self.0.read_reg(reg)
            }
            fn config_write(&mut self, reg: usize, offset: usize, data: &[u8]) {
                self.0.write(reg, offset, data)
            }
        }
        assert_eq!(seg.add(Arc::new(Mutex::new(Dev(cfg)))).unwrap(), 1);
        Arc::new(Mutex::new(seg))
    }

    #[test]
    fn cf8_reads_ids_and_absent_slots() {
        let seg = segment_with_device();
        let mut io = PciConfigIo::new(seg);
        let addr = |dev: u32, reg: u32| (0x8000_0000u32 | (dev << 11) | (reg << 2)).to_le_bytes();
        io.write(0, &addr(1, 0));
        let mut v = [0u8; 4];
        io.read(4, &mut v);
        assert_eq!(u32::from_le_bytes(v), 0x1042_1af4);
        let mut w = [0u8; 2];
        io.read(6, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x1042);
        io.write(0, &addr(5, 0));
        io.read(4, &mut v);
        assert_eq!(v, [0xff; 4]);
        // Address register reads back.
        io.read(0, &mut v);
        assert_eq!(v, addr(5, 0));
    }

    #[test]
    fn ecam_bar_sizing() {
        let seg = segment_with_device();
        let mut mmio = PciConfigMmio::new(seg);
        let bar0 = (1 << 15) | 0x10;
        mmio.write(bar0, &0xffff_ffffu32.to_le_bytes());
        let mut v = [0u8; 4];
        mmio.read(bar0, &mut v);
        assert_eq!(u32::from_le_bytes(v), !(0x4000 - 1));
        mmio.write(bar0, &0xc000_0000u32.to_le_bytes());
        mmio.read(bar0, &mut v);
        assert_eq!(u32::from_le_bytes(v), 0xc000_0000);
        // Host bridge class code.
        mmio.read(0x8, &mut v);
        assert_eq!(u32::from_le_bytes(v) >> 8, 0x06_00_00);
        // Function 1 is absent; misaligned access reads all ones.
        mmio.read((1 << 15) | (1 << 12), &mut v);
        assert_eq!(v, [0xff; 4]);
        mmio.read(bar0 + 1, &mut v);
        assert_eq!(v, [0xff; 4]);
    }
}
