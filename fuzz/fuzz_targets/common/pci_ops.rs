//! The input language of `pci_transport`: what a hostile driver does to a
//! virtio-pci device, one operation after the other. Shared by the target
//! (which decodes it) and the seed writer (which encodes driver sessions).
//!
//! Byte 0 picks the device: bit 0 virtio-blk (else virtio-rng), bit 1 a
//! read-only disk. Then operations, each an opcode byte (taken modulo
//! [`OPS`]) and its arguments (little-endian; an operation cut short by the
//! end of the input is not run):
//!
//! | op | arguments | does |
//! |---|---|---|
//! | `CFG_READ` | reg u16 | `config_read(reg % 1024)` (past the 256 bytes too) |
//! | `CFG_WRITE` | reg u16, offset u8, width u8, value u32 | `config_write(reg % 1024, offset % 4, 1/2/4 bytes)` |
//! | `BAR_READ` | region u8, offset u16, width u8 | a read of 1..=8 bytes in BAR 0 |
//! | `BAR_WRITE` | region u8, offset u16, width u8, value u64 | a write of 1..=8 bytes in BAR 0 |
//! | `MEM_WRITE` | addr u32, len u8, len bytes | bytes into guest memory (rings, requests) |
//! | `SETUP` | queue size log2 u8, features lo u32, hi u32, flags u8 | a driver's whole start-up (see the target) |
//! | `POST` | count u8, per buffer (offset u16, len u16, flags u8), head len u8, head bytes | a descriptor chain made available and notified |
//! | `CFG_PORT` | kind u8, offset u16, width u8, value u32 | configuration access through ECAM or 0xCF8/0xCFC |
//! | `NOTIFY` | queue u8, width u8 | a write to the notification area |
//! | `WAIT` | — | until the worker thread sleeps again (2 ms an input at most) |
//!
//! BAR regions (offset taken modulo the region's span, the access kept
//! inside the BAR as the MMIO bus does): common configuration, ISR, device
//! configuration, notifications, MSI-X table, MSI-X PBA, the whole BAR.

#![allow(dead_code)]

pub const CFG_READ: u8 = 0;
pub const CFG_WRITE: u8 = 1;
pub const BAR_READ: u8 = 2;
pub const BAR_WRITE: u8 = 3;
pub const MEM_WRITE: u8 = 4;
pub const SETUP: u8 = 5;
pub const POST: u8 = 6;
pub const CFG_PORT: u8 = 7;
pub const NOTIFY: u8 = 8;
pub const WAIT: u8 = 9;
pub const OPS: u8 = 10;

/// Device selection (byte 0).
pub const DEV_BLK: u8 = 1;
pub const DEV_READONLY: u8 = 2;

/// BAR regions: (offset, span).
pub const REGIONS: [(u64, u64); 7] = [
    (0x0000, 0x40),
    (0x1000, 4),
    (0x2000, 0x40),
    (0x3000, 0x10),
    (0x4000, 0x40),
    (0x6000, 0x10),
    (0x0000, 0x8000),
];
/// The region index covering the whole BAR.
pub const WHOLE_BAR: u8 = 6;

/// `SETUP` flags.
pub const SETUP_MSIX: u8 = 1;
/// `POST` buffer flag: device-writable (VRING_DESC_F_WRITE).
pub const BUF_WRITE: u8 = 2;
/// `POST` buffer flag: an indirect table (VRING_DESC_F_INDIRECT).
pub const BUF_INDIRECT: u8 = 4;

/// `CFG_PORT` kind bits: write (else read), through 0xCF8/0xCFC (else
/// ECAM), another slot than the device's (slot from bits 3..8).
pub const PORT_WRITE: u8 = 1;
pub const PORT_CF8: u8 = 2;
pub const PORT_OTHER_SLOT: u8 = 4;

/// Guest memory and where `SETUP` puts queue 0.
pub const MEM: u64 = 0x4_0000;
pub const DESC: u64 = 0x0000;
pub const AVAIL: u64 = 0x1000;
pub const USED: u64 = 0x2000;
/// Buffers of `POST` are at DATA + offset.
pub const DATA: u64 = 0x3000;

/// Builds an input, for seeds.
pub struct Ops(pub Vec<u8>);

impl Ops {
    pub fn new(device: u8) -> Self {
        Self(vec![device])
    }

    fn op(&mut self, op: u8, args: &[&[u8]]) -> &mut Self {
        self.0.push(op);
        for a in args {
            self.0.extend_from_slice(a);
        }
        self
    }

    pub fn cfg_read(&mut self, reg: u16) -> &mut Self {
        self.op(CFG_READ, &[&reg.to_le_bytes()])
    }

    pub fn cfg_write(&mut self, reg: u16, offset: u8, width: usize, value: u32) -> &mut Self {
        let w = match width {
            1 => 0u8,
            2 => 1,
            _ => 2,
        };
        self.op(
            CFG_WRITE,
            &[&reg.to_le_bytes(), &[offset, w], &value.to_le_bytes()],
        )
    }

    /// A read of `width` bytes at `offset` in BAR 0.
    pub fn bar_read(&mut self, offset: u16, width: u8) -> &mut Self {
        self.op(
            BAR_READ,
            &[&[WHOLE_BAR], &offset.to_le_bytes(), &[width - 1]],
        )
    }

    /// A write of `width` bytes of `value` at `offset` in BAR 0.
    pub fn bar_write(&mut self, offset: u16, width: u8, value: u64) -> &mut Self {
        self.op(
            BAR_WRITE,
            &[
                &[WHOLE_BAR],
                &offset.to_le_bytes(),
                &[width - 1],
                &value.to_le_bytes(),
            ],
        )
    }

    pub fn mem_write(&mut self, addr: u32, bytes: &[u8]) -> &mut Self {
        for (i, chunk) in bytes.chunks(255).enumerate() {
            let at = addr + (i * 255) as u32;
            self.op(MEM_WRITE, &[&at.to_le_bytes(), &[chunk.len() as u8], chunk]);
        }
        self
    }

    pub fn setup(&mut self, size_log2: u8, features: u64, flags: u8) -> &mut Self {
        self.op(
            SETUP,
            &[
                &[size_log2],
                &(features as u32).to_le_bytes(),
                &((features >> 32) as u32).to_le_bytes(),
                &[flags],
            ],
        )
    }

    /// A chain of `buffers` (offset from DATA, length, flags); `head` is
    /// written at the first buffer (at most 16 bytes).
    pub fn post(&mut self, buffers: &[(u16, u16, u8)], head: &[u8]) -> &mut Self {
        self.0.push(POST);
        self.0.push(buffers.len() as u8 - 1);
        for (offset, len, flags) in buffers {
            self.0.extend_from_slice(&offset.to_le_bytes());
            self.0.extend_from_slice(&len.to_le_bytes());
            self.0.push(*flags);
        }
        self.0.push(head.len() as u8);
        self.0.extend_from_slice(head);
        self
    }

    pub fn cfg_port(&mut self, kind: u8, offset: u16, width: u8, value: u32) -> &mut Self {
        self.op(
            CFG_PORT,
            &[
                &[kind],
                &offset.to_le_bytes(),
                &[width - 1],
                &value.to_le_bytes(),
            ],
        )
    }

    pub fn notify(&mut self, queue: u8, width: u8) -> &mut Self {
        self.op(NOTIFY, &[&[queue, width - 1]])
    }

    pub fn wait(&mut self) -> &mut Self {
        self.op(WAIT, &[])
    }
}
