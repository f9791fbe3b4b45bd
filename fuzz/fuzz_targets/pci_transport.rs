//! The virtio-pci transport as a guest driver reaches it: a device
//! (virtio-rng, or virtio-blk over a 1 MiB scratch image) behind
//! `VirtioPciDevice` with 256 KiB of guest memory and a `LocalMsiRouter`,
//! driven by a sequence of operations (see `common/pci_ops.rs`):
//! configuration space reads and writes at any register, offset and width
//! (directly and through ECAM and 0xCF8/0xCFC), BAR 0 reads and writes of
//! 1 to 8 bytes anywhere (common configuration, ISR, device configuration,
//! notifications, MSI-X table and PBA), bytes into guest memory, a driver's
//! whole start-up with queue 0 in RAM (so activation, the worker and
//! interrupts are reached often), descriptor chains made available and
//! notified. Writes to a queue's notification address signal its eventfd,
//! as the VMM's ioeventfd does, and never reach the device.
//!
//! Nothing may panic (the worker thread included) or hang; the ids stay
//! read-only; the device has one queue; a reset reads back 0 and gives the
//! kick eventfd back; a well-formed start-up always activates (status
//! 0x0f, not NEEDS_RESET); dropping the device stops its worker thread.
//!
//! `PV_FUZZ_SHOW=1` prints the device's status and counters after each
//! input (to see how far an input gets).

#![no_main]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use pv_devices::bus::BusDevice;
use pv_devices::pci::msix::{LocalMsiRouter, MSIX_CAP_ID, MSIX_ENABLE};
use pv_devices::pci::{PciConfigIo, PciConfigMmio, PciDevice, PciSegment};
use pv_devices::virtio::block::{Block, BlockParams};
use pv_devices::virtio::pci::{VirtioPciDevice, BAR_SIZE};
use pv_devices::virtio::rng::Rng;
use pv_devices::virtio::{VirtioDevice, VIRTIO_F_VERSION_1};
use pv_devices::GuestMemory;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

#[path = "common/pci_ops.rs"]
mod pci_ops;
#[path = "common/scratch.rs"]
mod scratch;
use pci_ops::*;

/// Operations run per input at most.
const MAX_OPS: usize = 256;
/// Time `WAIT` may spend per input at most.
const MAX_WAIT: Duration = Duration::from_millis(2);
const BAR: u64 = 0xc000_0000;
const SLOT: u8 = 1;
const STATUS: u64 = 0x14;
const RUNNING: u64 = 0x0f;
const NOTIFY_AREA: u64 = 0x3000;

/// The scratch image, unlinked at once; each virtio-blk opens it again
/// through /proc/self/fd.
fn disk_path() -> String {
    static DISK: OnceLock<File> = OnceLock::new();
    let file = DISK.get_or_init(|| scratch::scratch_image("pci-blk", 1 << 20));
    format!("/proc/self/fd/{}", file.as_raw_fd())
}

fn device(kind: u8) -> Box<dyn VirtioDevice> {
    if kind & DEV_BLK == 0 {
        return Box::new(Rng::new().expect("open /dev/urandom"));
    }
    let params = BlockParams {
        path: disk_path().into(),
        readonly: kind & DEV_READONLY != 0,
        id: Some("pv-fuzz".into()),
    };
    Box::new(Block::new(&params).expect("open the scratch image"))
}

/// Threads of this process.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

/// Whether every other thread of the process sleeps: the device worker
/// waits for a kick again (a notified worker is runnable from the write
/// of its eventfd on); libFuzzer's own thread sleeps between checks.
fn others_asleep() -> bool {
    // SAFETY: gettid has no preconditions.
    let me = unsafe { libc::gettid() }.to_string();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return true;
    };
    tasks.flatten().all(|t| {
        t.file_name() == me.as_str()
            || std::fs::read_to_string(t.path().join("stat")).map_or(true, |stat| {
                // The state follows the parenthesised command name.
                stat.rsplit_once(") ")
                    .is_none_or(|(_, rest)| rest.starts_with('S'))
            })
    })
}

/// The fuzz input, read front to back.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|[b]| b)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }
    fn bytes(&mut self, n: usize) -> Option<&[u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
}

fn lock(dev: &Mutex<VirtioPciDevice>) -> MutexGuard<'_, VirtioPciDevice> {
    dev.lock().unwrap_or_else(|e| e.into_inner())
}

fn w(dev: &mut VirtioPciDevice, offset: u64, value: u64, width: usize) {
    dev.write(offset, &value.to_le_bytes()[..width]);
}

fn r(dev: &mut VirtioPciDevice, offset: u64, width: usize) -> u64 {
    let mut b = [0u8; 8];
    dev.read(offset, &mut b[..width]);
    u64::from_le_bytes(b)
}

/// The driver's view of queue 0.
struct Ring {
    size: u16,
    next_avail: u16,
    next_desc: u16,
}

impl Default for Ring {
    /// Where a start-up puts the queue, for inputs that set it up by hand.
    fn default() -> Self {
        Ring {
            size: 16,
            next_avail: 0,
            next_desc: 0,
        }
    }
}

/// Offset of the first capability with `id`, walking the list as a driver.
fn find_capability(dev: &mut VirtioPciDevice, id: u8) -> Option<usize> {
    let byte =
        |dev: &mut VirtioPciDevice, at: usize| (dev.config_read(at / 4) >> (at % 4 * 8)) as u8;
    let mut at = usize::from(byte(dev, 0x34));
    for _ in 0..48 {
        if at < 0x40 {
            return None;
        }
        if byte(dev, at) == id {
            return Some(at);
        }
        at = usize::from(byte(dev, at + 1));
    }
    None
}

/// A Linux-like start-up: reset, ACKNOWLEDGE, DRIVER, features (the input's
/// choice of the offered ones, VERSION_1 always), FEATURES_OK, MSI-X on with
/// every vector routed and unmasked (when asked), queue 0 of the input's
/// size in RAM with its rings zeroed, DRIVER_OK. It must activate.
fn setup(
    dev: &mut VirtioPciDevice,
    mem: &GuestMemory,
    size_log2: u8,
    features: u64,
    flags: u8,
) -> Ring {
    w(dev, STATUS, 0, 1);
    assert_eq!(r(dev, STATUS, 1), 0, "status after a reset");
    w(dev, STATUS, 1, 1);
    w(dev, STATUS, 1 | 2, 1);
    w(dev, 0x00, 0, 4);
    let lo = r(dev, 0x04, 4);
    w(dev, 0x00, 1, 4);
    let offered = lo | (r(dev, 0x04, 4) << 32);
    assert_ne!(offered & VIRTIO_F_VERSION_1, 0, "VERSION_1 offered");
    let acked = offered & (features | VIRTIO_F_VERSION_1);
    w(dev, 0x08, 0, 4);
    w(dev, 0x0c, acked & 0xffff_ffff, 4);
    w(dev, 0x08, 1, 4);
    w(dev, 0x0c, acked >> 32, 4);
    w(dev, STATUS, 1 | 2 | 8, 1);
    assert_eq!(r(dev, STATUS, 1), 1 | 2 | 8, "FEATURES_OK with VERSION_1");
    let msix = flags & SETUP_MSIX != 0;
    if msix {
        let cap = find_capability(dev, MSIX_CAP_ID).expect("an MSI-X capability");
        let table = ((dev.config_read(cap / 4) >> 16) & 0x7ff) + 1;
        dev.config_write(cap / 4, 2, &MSIX_ENABLE.to_le_bytes());
        for v in 0..u64::from(table) {
            let entry = 0x4000 + v * 16;
            w(dev, entry, 0xfee0_0000, 8);
            w(dev, entry + 8, 0x30 + v, 4);
            w(dev, entry + 12, 0, 4);
        }
        w(dev, 0x10, 0, 2);
        assert_eq!(r(dev, 0x10, 2), 0, "config vector");
    }
    w(dev, 0x16, 0, 2);
    let max = r(dev, 0x18, 2) as u16;
    assert!(max.is_power_of_two(), "queue 0 has a size");
    let size = (1u16 << (size_log2 % 16)).min(max);
    w(dev, 0x18, u64::from(size), 2);
    if msix {
        w(dev, 0x1a, 1, 2);
    }
    mem.write_slice(&[0; 4], GuestAddress(AVAIL)).unwrap();
    mem.write_slice(&[0; 4], GuestAddress(USED)).unwrap();
    w(dev, 0x20, DESC, 8);
    w(dev, 0x28, AVAIL, 8);
    w(dev, 0x30, USED, 8);
    w(dev, 0x1c, 1, 2);
    w(dev, STATUS, RUNNING, 1);
    assert_eq!(
        r(dev, STATUS, 1),
        RUNNING,
        "a well-formed start-up activates"
    );
    Ring {
        size,
        next_avail: 0,
        next_desc: 0,
    }
}

/// Writes a chain of `bufs` into the descriptor table, `head` at its first
/// buffer, and makes it available.
fn post(mem: &GuestMemory, ring: &mut Ring, bufs: &[(u16, u16, u8)], head: &[u8]) {
    let size = ring.size.max(1);
    let first = ring.next_desc % size;
    for (i, &(offset, len, flags)) in bufs.iter().enumerate() {
        let d = (ring.next_desc.wrapping_add(i as u16)) % size;
        let next = (ring.next_desc.wrapping_add(i as u16 + 1)) % size;
        let addr = DATA + u64::from(offset);
        let mut f = u16::from(flags & (BUF_WRITE | BUF_INDIRECT));
        if i + 1 < bufs.len() {
            f |= 1;
        }
        let mut desc = [0u8; 16];
        desc[0..8].copy_from_slice(&addr.to_le_bytes());
        desc[8..12].copy_from_slice(&u32::from(len).to_le_bytes());
        desc[12..14].copy_from_slice(&f.to_le_bytes());
        desc[14..16].copy_from_slice(&next.to_le_bytes());
        mem.write_slice(&desc, GuestAddress(DESC + u64::from(d) * 16))
            .unwrap();
        if i == 0 {
            let _ = mem.write_slice(head, GuestAddress(addr));
        }
    }
    let slot = AVAIL + 4 + u64::from(ring.next_avail % size) * 2;
    mem.write_obj(first, GuestAddress(slot)).unwrap();
    ring.next_avail = ring.next_avail.wrapping_add(1);
    mem.write_obj(ring.next_avail, GuestAddress(AVAIL + 2))
        .unwrap();
    ring.next_desc = ring.next_desc.wrapping_add(bufs.len() as u16) % size;
}

/// A BAR access: region, offset and width from the input, kept inside
/// the BAR as the MMIO bus keeps it.
fn bar_access(input: &mut Input) -> Option<(u64, usize)> {
    let (base, span) = REGIONS[usize::from(input.u8()?) % REGIONS.len()];
    let offset = base + u64::from(input.u16()?) % span;
    let width = 1 + usize::from(input.u8()? % 8);
    Some((offset.min(BAR_SIZE - width as u64), width))
}

/// One input's device and what drives it.
struct Harness {
    mem: Arc<GuestMemory>,
    dev: Arc<Mutex<VirtioPciDevice>>,
    ecam: PciConfigMmio,
    cf8: PciConfigIo,
    /// The notification addresses (BAR offsets) with their eventfds, as
    /// the VMM registers them as ioeventfds: a write there of any width
    /// signals the eventfd and never reaches the device.
    ioeventfds: Vec<(u64, EventFd)>,
    ring: Ring,
    /// Time spent in `WAIT` so far.
    waited: Duration,
}

impl Harness {
    fn new(kind: u8) -> Self {
        let mem = Arc::new(GuestMemory::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap());
        let router = Arc::new(LocalMsiRouter::new());
        let pci = VirtioPciDevice::new("fuzz", device(kind), mem.clone(), router, BAR)
            .expect("the transport");
        let ioeventfds = pci
            .notify_eventfds()
            .into_iter()
            .map(|(addr, fd)| (addr - BAR, fd.try_clone().expect("clone an eventfd")))
            .collect();
        let dev = Arc::new(Mutex::new(pci));
        let mut segment = PciSegment::new();
        assert_eq!(segment.add(dev.clone()).unwrap(), SLOT);
        let segment = Arc::new(Mutex::new(segment));
        Self {
            mem,
            ecam: PciConfigMmio::new(segment.clone()),
            cf8: PciConfigIo::new(segment),
            dev,
            ioeventfds,
            ring: Ring::default(),
            waited: Duration::ZERO,
        }
    }

    /// A guest write into BAR 0, caught by an ioeventfd where one listens.
    fn bar_write(&self, offset: u64, data: &[u8]) {
        match self.ioeventfds.iter().find(|(at, _)| *at == offset) {
            Some((_, fd)) => fd.write(1).expect("signal an ioeventfd"),
            None => lock(&self.dev).write(offset, data),
        }
    }

    /// Runs one operation; None when the input ends first.
    fn step(&mut self, input: &mut Input) -> Option<()> {
        let dev = &self.dev;
        let mem = &self.mem;
        match input.u8()? % OPS {
            CFG_READ => {
                let reg = usize::from(input.u16()? % 1024);
                lock(dev).config_read(reg);
            }
            CFG_WRITE => {
                let reg = usize::from(input.u16()? % 1024);
                let offset = usize::from(input.u8()? % 4);
                let width = [1, 2, 4][usize::from(input.u8()? % 3)];
                let value = input.u32()?.to_le_bytes();
                lock(dev).config_write(reg, offset, &value[..width]);
            }
            BAR_READ => {
                let (offset, width) = bar_access(input)?;
                let value = r(&mut lock(dev), offset, width);
                if (offset, width) == (0x12, 2) {
                    assert_eq!(value, 1, "num_queues");
                }
            }
            BAR_WRITE => {
                let (offset, width) = bar_access(input)?;
                let value = input.u64()?;
                self.bar_write(offset, &value.to_le_bytes()[..width]);
                let mut d = lock(dev);
                if (offset, width) == (STATUS, 1) && value as u8 == 0 {
                    assert_eq!(r(&mut d, STATUS, 1), 0, "status after a reset");
                    assert_eq!(
                        d.notify_eventfds().len(),
                        1,
                        "the kick is back after a reset"
                    );
                }
            }
            MEM_WRITE => {
                let addr = u64::from(input.u32()?) % MEM;
                let len = usize::from(input.u8()?);
                let bytes = input.bytes(len)?;
                let n = bytes.len().min((MEM - addr) as usize);
                mem.write_slice(&bytes[..n], GuestAddress(addr)).unwrap();
            }
            SETUP => {
                let size_log2 = input.u8()?;
                let features = u64::from(input.u32()?) | (u64::from(input.u32()?) << 32);
                let flags = input.u8()?;
                self.ring = setup(&mut lock(dev), mem, size_log2, features, flags);
            }
            POST => {
                let n = 1 + usize::from(input.u8()? % 4);
                let mut bufs = Vec::with_capacity(n);
                for _ in 0..n {
                    bufs.push((input.u16()?, input.u16()?, input.u8()?));
                }
                let len = usize::from(input.u8()? % 17);
                let head = input.bytes(len)?;
                post(mem, &mut self.ring, &bufs, head);
                self.bar_write(NOTIFY_AREA, &[0, 0]);
            }
            CFG_PORT => {
                let kind = input.u8()?;
                let offset = input.u16()?;
                let width = input.u8()?;
                let mut buf = input.u32()?.to_le_bytes();
                let slot = if kind & PORT_OTHER_SLOT != 0 {
                    u32::from(kind >> 3)
                } else {
                    u32::from(SLOT)
                };
                let write = kind & PORT_WRITE != 0;
                if kind & PORT_CF8 == 0 {
                    // Bus 0; function and register from the offset.
                    let addr = (u64::from(slot) << 15) | u64::from(offset & 0x7fff);
                    let width = 1 + usize::from(width % 4);
                    if write {
                        self.ecam.write(addr, &buf[..width]);
                    } else {
                        self.ecam.read(addr, &mut buf[..width]);
                    }
                } else {
                    let enable = if offset & 0x8000 == 0 { 0x8000_0000 } else { 0 };
                    let address = enable | (slot << 11) | u32::from(offset & 0x7fc);
                    self.cf8.write(0, &address.to_le_bytes());
                    let port = 4 + u64::from((offset >> 12) & 3);
                    let width = [1, 2, 4][usize::from(width % 3)];
                    if write {
                        self.cf8.write(port, &buf[..width]);
                    } else {
                        self.cf8.read(port, &mut buf[..width]);
                    }
                }
            }
            NOTIFY => {
                let queue = u64::from(input.u8()? % 8);
                let width = 1 + usize::from(input.u8()? % 8);
                let offset = (NOTIFY_AREA + queue * 4).min(BAR_SIZE - width as u64);
                self.bar_write(offset, &[0; 8][..width]);
            }
            WAIT => {
                let start = Instant::now();
                while self.waited + start.elapsed() < MAX_WAIT && !others_asleep() {
                    std::thread::yield_now();
                }
                self.waited += start.elapsed();
            }
            _ => unreachable!(),
        }
        Some(())
    }

    /// Drops the device (and its worker) after checking what must hold.
    fn finish(self, id: u32) {
        let Harness {
            dev,
            ecam,
            cf8,
            ioeventfds,
            ..
        } = self;
        assert_eq!(lock(&dev).config_read(0), id, "ids are read-only");
        if std::env::var_os("PV_FUZZ_SHOW").is_some() {
            let mut d = lock(&dev);
            let t = d.transport_metrics();
            eprintln!(
                "status {:#x}, {} notifications, {} interrupts, device {}",
                r(&mut d, STATUS, 1),
                t.notifications.load(Ordering::Relaxed),
                t.interrupts.load(Ordering::Relaxed),
                d.device_metrics().unwrap_or_default()
            );
        }
        drop((ecam, cf8, ioeventfds));
        drop(Arc::into_inner(dev).expect("the only reference to the device"));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, ops)) = data.split_first() else {
        return;
    };
    let before = threads();
    let mut h = Harness::new(kind);
    let id = lock(&h.dev).config_read(0);
    let mut input = Input(ops);
    for _ in 0..MAX_OPS {
        if h.step(&mut input).is_none() {
            break;
        }
    }
    h.finish(id);
    // Dropping the device stopped its worker: the thread goes away (the
    // kernel may list a joined thread for a moment).
    let deadline = Instant::now() + Duration::from_secs(2);
    while threads() > before {
        assert!(
            Instant::now() < deadline,
            "a device worker outlived its device"
        );
        std::thread::yield_now();
    }
});
