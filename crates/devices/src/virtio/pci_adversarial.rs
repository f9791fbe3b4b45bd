//! Randomized adversarial tests of what a guest reaches in this crate: the
//! virtio-pci transport (BAR and configuration space), virtio-blk request
//! chains, the virtio-input configuration space, PCI configuration access
//! (0xCF8/0xCFC and ECAM) and the buses. A hostile guest writes garbage at
//! random offsets and widths; nothing may panic, hang or lose state the
//! device needs, and well-formed use must work afterwards.
//!
//! Deterministic: a small xorshift generator with fixed seeds; a failure
//! names its seed and step.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pv_display::{InputEvent, InputSink};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use super::block::request::tests::{run_chain, TempImage, D};
use super::block::request::{Layout, Request, MAX_DISCARD_SECTORS, MAX_TRANSFER_BYTES};
use super::block::{BlockMetrics, Disk};
use super::input::{InputDevice, InputKind};
use super::pci::{VirtioPciDevice, BAR_SIZE};
use super::{
    read_config_bytes, ActivateContext, ActivateError, Interrupt, InterruptKind, VirtioDevice,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use crate::bus::{Bus, BusDevice, BusError};
use crate::pci::msix::tests::TestRouter;
use crate::pci::{BarKind, PciConfigIo, PciConfigMmio, PciConfigSpace, PciDevice, PciSegment};
use crate::GuestMemory;

/// xorshift64* (Vigna): small, fast and good enough to pick test cases.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True once in `n` times.
    fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// 0..=`max` random bytes.
    fn some_bytes(&mut self, max: u64) -> Vec<u8> {
        let n = self.below(max + 1) as usize;
        self.bytes(n)
    }
}

// ---------------------------------------------------------------------------
// virtio-pci transport
// ---------------------------------------------------------------------------

const STATUS_ACK: u8 = 1;
const STATUS_DRIVER: u8 = 2;
const STATUS_DRIVER_OK: u8 = 4;
const STATUS_FEATURES_OK: u8 = 8;

/// A queue as handed to the device: size, ready, desc, avail, used.
type QueueSeen = (u16, bool, u64, u64, u64);

/// What the probe device saw.
#[derive(Default)]
struct ProbeState {
    /// Acked features and queues of each activation.
    activations: Vec<(u64, Vec<QueueSeen>)>,
    /// The kick eventfds while active.
    kicks: Vec<EventFd>,
    interrupt: Option<Arc<dyn Interrupt>>,
    config: [u8; 8],
}

/// A device that records what the transport hands it.
struct Probe {
    sizes: Vec<u16>,
    state: Arc<Mutex<ProbeState>>,
}

const PROBE_FEATURES: u64 =
    VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | VIRTIO_RING_F_INDIRECT_DESC | 1 | (1 << 40);

impl VirtioDevice for Probe {
    fn device_type(&self) -> u32 {
        super::device_type::RNG
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn features(&self) -> u64 {
        PROBE_FEATURES
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.state.lock().unwrap().config, offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let mut s = self.state.lock().unwrap();
        for (i, &b) in data.iter().enumerate() {
            if let Some(at) = offset.checked_add(i as u64).filter(|&at| at < 8) {
                s.config[at as usize] = b;
            }
        }
    }
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let mut s = self.state.lock().unwrap();
        assert!(s.kicks.is_empty(), "activated twice without a reset");
        assert_eq!(ctx.queues.len(), self.sizes.len());
        assert_eq!(ctx.acked_features & !PROBE_FEATURES, 0, "unoffered feature");
        let queues = ctx
            .queues
            .iter()
            .map(|q| {
                let q = &q.queue;
                (
                    q.size(),
                    q.ready(),
                    q.desc_table(),
                    q.avail_ring(),
                    q.used_ring(),
                )
            })
            .collect();
        s.activations.push((ctx.acked_features, queues));
        s.kicks = ctx.queues.into_iter().map(|q| q.kick).collect();
        s.interrupt = Some(ctx.interrupt);
        Ok(())
    }
    fn reset(&mut self) -> Option<Vec<EventFd>> {
        let mut s = self.state.lock().unwrap();
        s.interrupt = None;
        Some(std::mem::take(&mut s.kicks))
    }
}

const PROBE_QUEUES: [u16; 3] = [16, 256, 2];
const BAR: u64 = 0xc000_0000;

fn transport_mem() -> Arc<GuestMemory> {
    Arc::new(GuestMemory::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap())
}

fn probe_transport() -> (VirtioPciDevice, Arc<Mutex<ProbeState>>, Arc<GuestMemory>) {
    let state = Arc::new(Mutex::new(ProbeState::default()));
    let probe = Probe {
        sizes: PROBE_QUEUES.to_vec(),
        state: state.clone(),
    };
    let mem = transport_mem();
    let dev = VirtioPciDevice::new(
        "probe",
        Box::new(probe),
        mem.clone(),
        Arc::new(TestRouter::default()),
        BAR,
    )
    .unwrap();
    (dev, state, mem)
}

fn w(dev: &mut VirtioPciDevice, off: u64, v: u64, len: usize) {
    dev.write(off, &v.to_le_bytes()[..len]);
}

fn r(dev: &mut VirtioPciDevice, off: u64, len: usize) -> u64 {
    let mut b = [0u8; 8];
    dev.read(off, &mut b[..len]);
    u64::from_le_bytes(b)
}

/// The configuration-space offset of capability `id` (walking the list).
fn find_cap(dev: &mut dyn PciDevice, id: u8) -> Option<usize> {
    let mut at = (dev.config_read(0xd) & 0xff) as usize;
    for _ in 0..48 {
        if at < 0x40 {
            return None;
        }
        let hdr = dev.config_read(at / 4) >> ((at % 4) * 8);
        if hdr as u8 == id {
            return Some(at);
        }
        at = ((hdr >> 8) & 0xff) as usize;
    }
    None
}

/// An offset in the BAR, mostly inside one of its structures.
fn bar_offset(rng: &mut Rng) -> u64 {
    match rng.below(12) {
        0 => rng.next(),
        1 => BAR_SIZE - rng.below(32),
        2 => 0x1000 + rng.below(8),
        3 => 0x2000 + rng.below(0x20),
        4 => 0x3000 - rng.below(16),
        5 => 0x3000 + rng.below(0x40),
        6 => 0x4000 + rng.below(0x60),
        7 => 0x6000 + rng.below(16),
        8 => rng.below(BAR_SIZE),
        _ => rng.below(0x48),
    }
}

/// One random guest action on the transport of a device with `queues`
/// queues; with the probe's `state`, the device also signals at random.
fn transport_op(
    rng: &mut Rng,
    dev: &mut VirtioPciDevice,
    queues: usize,
    state: Option<&Mutex<ProbeState>>,
) {
    match rng.below(19) {
        16 => {
            // The driver accepts features: VERSION_1 and anything else.
            w(dev, 0x08, 1, 4);
            w(dev, 0x0c, rng.next() | 1, 4);
            w(dev, 0x08, 0, 4);
            w(dev, 0x0c, rng.next(), 4);
        }
        17 => {
            // Queue setup with in-memory rings, then the whole status walk.
            let q = rng.below(queues as u64 + 1);
            w(dev, 0x16, q, 2);
            for off in [0x20, 0x28, 0x30] {
                w(dev, off, rng.below(0x1f) * 0x1_0000, 8);
            }
            w(dev, 0x1c, rng.below(2), 2);
            for status in [1, 3, 0xb, 0xf] {
                w(dev, 0x14, status, 1);
            }
        }
        0..=2 => {
            let mut data = vec![0u8; rng.below(17) as usize];
            let off = bar_offset(rng);
            dev.read(off, &mut data);
            if off < 0x40 && !matches!(data.len(), 1 | 2 | 4 | 8) {
                assert!(data.iter().all(|&b| b == 0), "odd-width read at {off:#x}");
            }
        }
        3..=5 => {
            let data = rng.some_bytes(16);
            dev.write(bar_offset(rng), &data);
        }
        6 => {
            // The common structure, at its fields' natural widths.
            let (off, len) = rng.pick(&[
                (0x00, 4),
                (0x04, 4),
                (0x08, 4),
                (0x0c, 4),
                (0x10, 2),
                (0x16, 2),
                (0x18, 2),
                (0x1a, 2),
                (0x1c, 2),
                (0x20, 8),
                (0x24, 4),
                (0x28, 8),
                (0x2c, 4),
                (0x30, 8),
                (0x34, 4),
            ]);
            let v = match rng.below(4) {
                0 => rng.next(),
                1 => rng.below(4),
                2 => rng.pick(&[0xffff, 0x8000, 1 << 32, 0x1000, 256, 16]),
                _ => rng.below(0x20_0000) & !0xf,
            };
            w(dev, off, v, len);
        }
        7 | 8 => {
            // Status: anything, or a step of the handshake.
            let status = match rng.below(4) {
                0 => rng.next() as u8,
                1 => 0,
                _ => rng.pick(&[
                    STATUS_ACK,
                    STATUS_ACK | STATUS_DRIVER,
                    STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK,
                    STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
                    0x40,
                    0x80,
                    0xff,
                ]),
            };
            w(dev, 0x14, u64::from(status), 1);
        }
        9 | 10 => {
            // Configuration space at any register, offset and length.
            let reg = match rng.below(4) {
                0 => rng.next() as usize,
                1 => rng.range(60, 70) as usize,
                _ => rng.below(64) as usize,
            };
            let offset = match rng.below(6) {
                0 => rng.next() as usize,
                1 => usize::MAX - rng.below(8) as usize,
                _ => rng.below(6) as usize,
            };
            let data = rng.some_bytes(8);
            dev.config_write(reg, offset, &data);
        }
        11 => {
            let reg = if rng.one_in(4) {
                rng.next() as usize
            } else {
                rng.below(70) as usize
            };
            let v = dev.config_read(reg);
            if reg >= 64 {
                assert_eq!(v, 0xffff_ffff);
            }
        }
        12 => {
            // The device signals whatever it likes while active.
            let interrupt = state.and_then(|s| s.lock().unwrap().interrupt.clone());
            if let Some(i) = interrupt {
                let kind = if rng.one_in(3) {
                    InterruptKind::Config
                } else {
                    InterruptKind::Queue(rng.pick(&[0, 1, 2, 3, 255, u16::MAX]))
                };
                i.trigger(kind);
            }
        }
        13 => {
            // MSI-X table entries: an address and data, (un)masked.
            let entry = rng.below(6) * 16;
            w(dev, 0x4000 + entry, 0xfee0_0000, 4);
            w(dev, 0x4000 + entry + 8, rng.below(256), 4);
            w(dev, 0x4000 + entry + 12, rng.below(2), 4);
        }
        14 => {
            // MSI-X enable and function mask through the capability.
            let cap = find_cap(dev, 0x11).unwrap();
            let ctl = rng.pick(&[0x8000u16, 0xc000, 0, 0x4000]);
            dev.config_write(cap / 4, 2, &ctl.to_le_bytes());
        }
        _ => {
            let isr = r(dev, 0x1000, 1);
            assert!(isr <= 3, "ISR {isr:#x}");
            assert_eq!(r(dev, 0x12, 2), queues as u64);
        }
    }
}

/// Queue `q`'s rings for the handshake.
fn queue_addrs(q: u64) -> (u64, u64, u64) {
    let base = 0x1_0000 * (q + 1);
    (base, base + 0x4000, base + 0x8000)
}

/// Reset, then the driver handshake a Linux driver does: features, every
/// queue, vectors, DRIVER_OK.
fn handshake(dev: &mut VirtioPciDevice) {
    w(dev, 0x14, 0, 1);
    assert_eq!(r(dev, 0x14, 1), 0, "reset");
    w(dev, 0x14, u64::from(STATUS_ACK), 1);
    w(dev, 0x14, u64::from(STATUS_ACK | STATUS_DRIVER), 1);
    for sel in 0..2 {
        w(dev, 0x00, sel, 4);
        let offered = r(dev, 0x04, 4);
        w(dev, 0x08, sel, 4);
        w(dev, 0x0c, offered, 4);
    }
    w(
        dev,
        0x14,
        u64::from(STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK),
        1,
    );
    assert_ne!(r(dev, 0x14, 1) as u8 & STATUS_FEATURES_OK, 0, "FEATURES_OK");
    let cap = find_cap(dev, 0x11).unwrap();
    dev.config_write(cap / 4, 2, &0x8000u16.to_le_bytes());
    for q in 0..PROBE_QUEUES.len() as u64 {
        w(dev, 0x16, q, 2);
        assert_eq!(r(dev, 0x18, 2), u64::from(PROBE_QUEUES[q as usize]));
        let (desc, avail, used) = queue_addrs(q);
        w(dev, 0x20, desc, 8);
        w(dev, 0x28, avail, 8);
        w(dev, 0x30, used, 8);
        w(dev, 0x1a, q + 1, 2);
        assert_eq!(r(dev, 0x1a, 2), q + 1, "queue vector");
        w(dev, 0x4000 + (q + 1) * 16, 0xfee0_0000, 4);
        w(dev, 0x4000 + (q + 1) * 16 + 8, 0x40 + q, 4);
        w(dev, 0x4000 + (q + 1) * 16 + 12, 0, 4);
        w(dev, 0x1c, 1, 2);
    }
    w(dev, 0x10, 0, 2);
    w(
        dev,
        0x14,
        u64::from(STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK),
        1,
    );
}

/// The kick eventfds are with the transport or with the active device,
/// never lost.
fn assert_kicks_kept(dev: &VirtioPciDevice, state: &Mutex<ProbeState>, ctx: &str) {
    let with_device = state.lock().unwrap().kicks.len();
    assert_eq!(
        dev.notify_eventfds().len() + with_device,
        PROBE_QUEUES.len(),
        "{ctx}: kick eventfds lost"
    );
}

#[test]
fn virtio_pci_random_bar_and_config_traffic_then_handshake() {
    let mut activations = 0;
    for seed in 1..=4 {
        let mut rng = Rng::new(seed);
        let (mut dev, state, _mem) = probe_transport();
        let vendor = dev.config_read(0);
        let class = dev.config_read(2);
        for step in 0..20_000 {
            transport_op(&mut rng, &mut dev, PROBE_QUEUES.len(), Some(&state));
            assert_kicks_kept(&dev, &state, &format!("seed {seed} step {step}"));
        }
        assert_eq!(dev.config_read(0), vendor, "ids are read-only");
        assert_eq!(dev.config_read(2), class);
        let before = state.lock().unwrap().activations.len();
        activations += before;

        handshake(&mut dev);
        assert_eq!(r(&mut dev, 0x14, 1), 0x0f, "seed {seed}: status");
        {
            let s = state.lock().unwrap();
            assert_eq!(s.activations.len(), before + 1, "seed {seed}: activated");
            let (features, queues) = &s.activations[before];
            assert_eq!(*features, PROBE_FEATURES, "seed {seed}");
            for (q, &(size, ready, desc, avail, used)) in queues.iter().enumerate() {
                let want = queue_addrs(q as u64);
                assert_eq!((size, ready), (PROBE_QUEUES[q], true), "seed {seed}");
                assert_eq!((desc, avail, used), want, "seed {seed} queue {q}");
            }
        }
        assert_kicks_kept(&dev, &state, "active");
        // Interrupts reach the programmed vectors.
        let interrupts = dev.transport_metrics().interrupts.load(Ordering::Relaxed);
        let interrupt = state.lock().unwrap().interrupt.clone().unwrap();
        interrupt.trigger(InterruptKind::Queue(1));
        assert_eq!(
            dev.transport_metrics().interrupts.load(Ordering::Relaxed),
            interrupts + 1
        );
        assert_eq!(r(&mut dev, 0x1000, 1), 1, "ISR");
        // A reset takes the kicks back.
        w(&mut dev, 0x14, 0, 1);
        assert_eq!(dev.notify_eventfds().len(), PROBE_QUEUES.len());
        assert_kicks_kept(&dev, &state, "reset");
    }
    assert!(activations > 200, "{activations} activations by garbage");
}

/// Regression: `PciDevice::config_write` with an offset near `usize::MAX`
/// overflowed `offset + data.len()` in `PciConfigSpace::write` (a panic in
/// debug builds).
#[test]
fn config_write_with_huge_offsets_is_ignored() {
    let (mut dev, _, _) = probe_transport();
    let before: Vec<u32> = (0..64).map(|reg| dev.config_read(reg)).collect();
    for offset in [usize::MAX, usize::MAX - 1, usize::MAX - 3, 1 << 63, 5] {
        for len in 0..=8 {
            dev.config_write(1, offset, &vec![0xff; len]);
            dev.config_write(4, offset, &vec![0xff; len]);
        }
    }
    let after: Vec<u32> = (0..64).map(|reg| dev.config_read(reg)).collect();
    assert_eq!(before, after);
    let mut cfg = PciConfigSpace::new(1, 2, 0, 0, 0);
    cfg.write(1, usize::MAX, &[0xff]);
    assert_eq!(cfg.read_reg(1), 0);
}

// ---------------------------------------------------------------------------
// virtio-input
// ---------------------------------------------------------------------------

/// The first `n` bytes of the config space, read in one go.
fn input_config(dev: &InputDevice, n: usize) -> Vec<u8> {
    let mut c = vec![0xaa; n];
    dev.read_config(0, &mut c);
    c
}

#[test]
fn input_config_space_at_random_selects_subsels_and_offsets() {
    let kinds = [InputKind::Keyboard, InputKind::Tablet];
    let mut rng = Rng::new(5);
    for kind in kinds {
        let mut dev = InputDevice::new(kind);
        let (mut select, mut subsel) = (0u8, 0u8);
        let mut sizes = BTreeMap::new();
        for step in 0..20_000 {
            let offset = match rng.below(8) {
                0 => rng.next(),
                1 => u64::MAX - rng.below(20),
                2 => rng.below(200),
                _ => rng.below(2),
            };
            if rng.one_in(2) {
                let data = if rng.one_in(2) {
                    // Mostly selects that mean something.
                    vec![
                        rng.pick(&[0, 1, 2, 3, 0x10, 0x11, 0x12, 0x13, 0xff]),
                        rng.pick(&[0, 1, 2, 3, 0x14, 0x15, 0x11, 0xff]),
                    ]
                } else {
                    rng.some_bytes(16)
                };
                dev.write_config(offset, &data);
                for (i, &b) in data.iter().enumerate() {
                    match offset.checked_add(i as u64) {
                        Some(0) => select = b,
                        Some(1) => subsel = b,
                        _ => {}
                    }
                }
            } else {
                let full = input_config(&dev, 256);
                let ctx = format!("{kind:?} step {step}");
                assert_eq!((full[0], full[1]), (select, subsel), "{ctx}");
                let size = usize::from(full[2]);
                assert!(size <= 128, "{ctx}: size {size}");
                assert!(full[3..8].iter().all(|&b| b == 0), "{ctx}: reserved");
                assert!(full[8 + size..].iter().all(|&b| b == 0), "{ctx}: tail");
                *sizes.entry((select, subsel)).or_insert(0) += 1;
                // Any window reads the same bytes (zero past the end).
                let mut part = vec![0x55u8; rng.below(200) as usize];
                dev.read_config(offset, &mut part);
                for (i, &b) in part.iter().enumerate() {
                    let want = offset
                        .checked_add(i as u64)
                        .and_then(|at| full.get(usize::try_from(at).ok()?).copied())
                        .unwrap_or(0);
                    assert_eq!(b, want, "{ctx}: byte {i} of a read at {offset:#x}");
                }
            }
        }
        assert!(sizes.len() > 20, "{kind:?}: {} selections", sizes.len());
        // A well-formed query afterwards.
        dev.write_config(0, &[1, 0]);
        let c = input_config(&dev, 136);
        let name = &c[8..8 + usize::from(c[2])];
        assert!(name.starts_with(b"PearVisor "), "{kind:?}");
    }
}

/// Regression: `InputDevice::write_config` computed `offset + i` unchecked,
/// so a write near the top of the offset range overflowed (a panic in
/// debug builds).
#[test]
fn input_config_write_at_the_top_of_the_offset_range() {
    let mut dev = InputDevice::new(InputKind::Keyboard);
    dev.write_config(u64::MAX, &[0x11, 0x01, 0x02]);
    dev.write_config(u64::MAX - 1, &[0x11, 0x01]);
    let c = input_config(&dev, 2);
    assert_eq!(c, [0, 0], "select and subsel untouched");
}

/// The input device behind the transport: random BAR and configuration
/// traffic (activating and resetting it with whatever queues the guest
/// left), then a clean handshake with an event queue of buffers, and a key
/// press reaches the guest.
#[test]
fn input_behind_the_transport_survives_garbage_and_delivers_events() {
    let mem = transport_mem();
    let dev = InputDevice::new(InputKind::Keyboard);
    let handle = dev.handle();
    let mut pci = VirtioPciDevice::new(
        "input",
        Box::new(dev),
        mem.clone(),
        Arc::new(TestRouter::default()),
        BAR,
    )
    .unwrap();
    let mut rng = Rng::new(77);
    let mut active = 0;
    for _ in 0..10_000 {
        transport_op(&mut rng, &mut pci, 2, None);
        // The kicks are with the worker exactly while the device runs.
        match pci.notify_eventfds().len() {
            0 => active += 1,
            n => assert_eq!(n, 2, "kick eventfds lost"),
        }
    }
    assert!(active > 100, "the device ran for {active} steps");
    // Clean handshake: eventq (0) with 4 buffers of 8 bytes, statusq (1).
    w(&mut pci, 0x14, 0, 1);
    let (desc, avail, used) = (0x1_0000u64, 0x1_4000u64, 0x1_8000u64);
    let events = 0x6_0000u64;
    mem.write_slice(&vec![0u8; 0x6_0000], GuestAddress(desc))
        .unwrap();
    for i in 0..4u16 {
        let d = Descriptor::new(events + u64::from(i) * 8, 8, 2, 0);
        mem.write_obj(
            RawDescriptor::from(d),
            GuestAddress(desc + u64::from(i) * 16),
        )
        .unwrap();
        mem.write_obj(i, GuestAddress(avail + 4 + u64::from(i) * 2))
            .unwrap();
    }
    mem.write_obj(4u16, GuestAddress(avail + 2)).unwrap();
    w(&mut pci, 0x14, 3, 1);
    w(&mut pci, 0x08, 1, 4);
    w(&mut pci, 0x0c, 1, 4);
    w(&mut pci, 0x14, 3 | 8, 1);
    for q in 0..2u64 {
        w(&mut pci, 0x16, q, 2);
        w(&mut pci, 0x18, 16, 2);
        let base = q * 0x2_0000;
        w(&mut pci, 0x20, desc + base, 8);
        w(&mut pci, 0x28, avail + base, 8);
        w(&mut pci, 0x30, used + base, 8);
        w(&mut pci, 0x1c, 1, 2);
    }
    w(&mut pci, 0x14, 0x0f, 1);
    assert_eq!(r(&mut pci, 0x14, 1), 0x0f);
    handle.send(InputEvent::Key {
        code: 30,
        pressed: true,
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while mem.read_obj::<u16>(GuestAddress(used + 2)).unwrap() < 2 {
        assert!(Instant::now() < deadline, "the key press never arrived");
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut ev = [0u8; 8];
    mem.read_slice(&mut ev, GuestAddress(events)).unwrap();
    assert_eq!(ev, [1, 0, 30, 0, 1, 0, 0, 0], "EV_KEY KEY_A 1");
    w(&mut pci, 0x14, 0, 1);
}

// ---------------------------------------------------------------------------
// virtio-blk request chains
// ---------------------------------------------------------------------------

const SECTORS: u64 = 64;
const BLK_SPLIT: u64 = 0x80_0000;
const BLK_END: u64 = 0x100_0000;
const BLK_FAR: u64 = 0x200_0000;
/// The mock queue's rings live below this; device-writable buffers don't.
const RINGS_END: u64 = 0x1000;
const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

/// Two adjacent regions (buffers may span them), a hole, a far region.
fn blk_mem() -> GuestMemory {
    GuestMemory::from_ranges(&[
        (GuestAddress(0), BLK_SPLIT as usize),
        (GuestAddress(BLK_SPLIT), (BLK_END - BLK_SPLIT) as usize),
        (GuestAddress(BLK_FAR), 0x1_0000),
    ])
    .unwrap()
}

/// What a request does to the image or the guest, once it succeeded.
enum Effect {
    None,
    /// Bytes written at a byte offset of the image.
    Write(u64, Vec<u8>),
    /// A byte range of the image zeroed.
    Zero(u64, u64),
    /// A byte range discarded: zero, or left as it was.
    Discard(u64, u64),
    /// The image from a byte offset copied into these guest buffers.
    ReadInto(u64, Vec<(u64, u64)>),
    /// The disk id copied into these guest buffers.
    Id(Vec<(u64, u64)>, usize),
}

/// The used length, status byte (with its address) and effect a chain
/// must get, worked out from the spec's rules (virtio 1.3 §5.2.6) rather
/// than from the device's parser.
struct Expect {
    used: u32,
    status: Option<(u64, u8)>,
    effect: Effect,
}

fn predict(descs: &[D], mem: &GuestMemory, readonly: bool) -> Expect {
    let none = Expect {
        used: 0,
        status: None,
        effect: Effect::None,
    };
    let descs: Vec<&D> = descs.iter().filter(|d| d.1 > 0).collect();
    let Some(last) = descs.last() else {
        return none;
    };
    if !last.2 {
        return none;
    }
    let Some(status) = last.0.checked_add(u64::from(last.1) - 1) else {
        return none;
    };
    if !mem.check_range(GuestAddress(status), 1) {
        return none;
    }
    let done = |s: u8, used: u64, effect: Effect| Expect {
        used: used as u32 + 1,
        status: Some((status, s)),
        effect,
    };
    let err = |s: u8| done(s, 0, Effect::None);
    let (mut readable, mut writable) = (Vec::new(), Vec::new());
    let mut misordered = false;
    for d in &descs {
        if d.2 {
            writable.push((d.0, u64::from(d.1)));
        } else {
            misordered |= !writable.is_empty();
            readable.push((d.0, u64::from(d.1)));
        }
    }
    let l = writable.last_mut().unwrap();
    l.1 -= 1;
    if l.1 == 0 {
        writable.pop();
    }
    if misordered {
        return err(IOERR);
    }
    let in_mem = |&(a, n): &(u64, u64)| mem.check_range(GuestAddress(a), n as usize);
    if !readable.iter().chain(&writable).all(in_mem) {
        return err(IOERR);
    }
    let rlen: u64 = readable.iter().map(|s| s.1).sum();
    let wlen: u64 = writable.iter().map(|s| s.1).sum();
    if rlen < 16 {
        return err(IOERR);
    }
    // The readable stream (its first MiB: more is refused anyway).
    let mut stream = Vec::new();
    for &(a, n) in &readable {
        let n = n.min((1 << 20) - stream.len() as u64) as usize;
        let mut b = vec![0u8; n];
        mem.read_slice(&mut b, GuestAddress(a)).unwrap();
        stream.extend(b);
    }
    let t = u32::from_le_bytes(stream[..4].try_into().unwrap());
    let sector = u64::from_le_bytes(stream[8..16].try_into().unwrap());
    let out_len = rlen - 16;
    if out_len.max(wlen) > MAX_TRANSFER_BYTES {
        return err(IOERR);
    }
    let range = |sector: u64, bytes: u64| {
        let offset = sector.checked_mul(512)?;
        let end = offset.checked_add(bytes)?;
        (bytes.is_multiple_of(512) && end <= SECTORS * 512).then_some(offset)
    };
    match t {
        VIRTIO_BLK_T_IN => match range(sector, wlen) {
            Some(offset) if out_len == 0 => done(OK, wlen, Effect::ReadInto(offset, writable)),
            _ => err(IOERR),
        },
        VIRTIO_BLK_T_OUT => match range(sector, out_len) {
            Some(offset) if wlen == 0 && !readonly => {
                done(OK, 0, Effect::Write(offset, stream[16..].to_vec()))
            }
            _ => err(IOERR),
        },
        VIRTIO_BLK_T_FLUSH => done(OK, 0, Effect::None),
        VIRTIO_BLK_T_GET_ID if out_len == 0 => {
            let n = (wlen as usize).min(20);
            done(OK, n as u64, Effect::Id(writable, n))
        }
        VIRTIO_BLK_T_GET_ID => err(IOERR),
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            if wlen != 0 || readonly || out_len != 16 {
                return err(IOERR);
            }
            let seg = &stream[16..32];
            let sector = u64::from_le_bytes(seg[..8].try_into().unwrap());
            let sectors = u32::from_le_bytes(seg[8..12].try_into().unwrap());
            let flags = u32::from_le_bytes(seg[12..].try_into().unwrap());
            if sectors > MAX_DISCARD_SECTORS {
                return err(IOERR);
            }
            let len = u64::from(sectors) * 512;
            let Some(offset) = range(sector, len) else {
                return err(IOERR);
            };
            if t == VIRTIO_BLK_T_DISCARD && flags != 0 || flags & !1 != 0 {
                return err(UNSUPP);
            }
            if t == VIRTIO_BLK_T_DISCARD {
                done(OK, 0, Effect::Discard(offset, len))
            } else {
                done(OK, 0, Effect::Zero(offset, len))
            }
        }
        _ => err(UNSUPP),
    }
}

/// Where the next buffer goes: mostly fresh space (so buffers don't
/// overlap), sometimes across the region split, sometimes anywhere.
struct Placer {
    next: u64,
}

impl Placer {
    fn place(&mut self, rng: &mut Rng, len: u64, writable: bool) -> u64 {
        let addr = match rng.below(16) {
            0 => BLK_SPLIT - rng.below(len + 1),
            1 => BLK_END - rng.below(len + 2),
            2 => BLK_FAR + rng.below(0x1_0000),
            3 => BLK_END + rng.below(BLK_FAR - BLK_END),
            4 => u64::MAX - rng.below(len + 2),
            5 => rng.next(),
            _ => {
                let a = self.next;
                self.next += len + rng.below(64);
                a
            }
        };
        if writable && addr < RINGS_END {
            addr + RINGS_END
        } else {
            addr
        }
    }
}

/// A random virtio-blk chain: a request of a random type with random
/// fields in a plausible layout, then mangled.
fn gen_blk_chain(rng: &mut Rng, mem: &GuestMemory) -> Vec<D> {
    let mut p = Placer {
        next: RINGS_END + rng.below(0x1000),
    };
    let t = match rng.below(40) {
        0 => VIRTIO_BLK_T_FLUSH,
        1..=8 => VIRTIO_BLK_T_IN,
        9..=16 => VIRTIO_BLK_T_OUT,
        17..=19 => VIRTIO_BLK_T_GET_ID,
        20..=24 => VIRTIO_BLK_T_DISCARD,
        25..=29 => VIRTIO_BLK_T_WRITE_ZEROES,
        30 => rng.next() as u32,
        _ => rng.pick(&[VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, 5, 6, 7, 9, 12, 14, 15]),
    };
    let sector = match rng.below(8) {
        0 => rng.pick(&[u64::MAX, u64::MAX / 512, 1 << 55, SECTORS, SECTORS - 1]),
        1 => rng.next(),
        _ => rng.below(SECTORS + 4),
    };
    let mut header = [0u8; 16];
    header[..4].copy_from_slice(&t.to_le_bytes());
    header[4..8].copy_from_slice(&(rng.next() as u32).to_le_bytes());
    header[8..].copy_from_slice(&sector.to_le_bytes());
    let mut descs = Vec::new();
    // The header, in 1..=3 pieces.
    let hdr_at = p.place(rng, 16, false);
    let mut cut = 0;
    let pieces = rng.range(1, 3);
    for i in 0..pieces {
        let end = if i + 1 == pieces {
            16
        } else {
            rng.range(cut, 16)
        };
        descs.push(D(hdr_at.wrapping_add(cut), (end - cut) as u32, false));
        cut = end;
    }
    let _ = mem.write_slice(&header, GuestAddress(hdr_at));
    // Data: readable for OUT, DISCARD and WRITE_ZEROES, else writable.
    let data_len = |rng: &mut Rng| match rng.below(10) {
        0 => rng.below(2000),
        1 => rng.pick(&[0, 1, 511, 513, 16]),
        _ => rng.below(9) * 512,
    };
    let readable_data = matches!(
        t,
        VIRTIO_BLK_T_OUT | VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES
    ) != rng.one_in(10);
    if t == VIRTIO_BLK_T_DISCARD || t == VIRTIO_BLK_T_WRITE_ZEROES {
        let mut seg = [0u8; 16];
        let sector = match rng.below(6) {
            0 => rng.next(),
            _ => rng.below(SECTORS + 2),
        };
        let sectors = match rng.below(6) {
            0 => rng.pick(&[MAX_DISCARD_SECTORS, MAX_DISCARD_SECTORS + 1, u32::MAX]),
            _ => rng.below(SECTORS / 2) as u32,
        };
        let flags = match rng.below(5) {
            0 => rng.next() as u32,
            1 => 1,
            _ => 0,
        };
        seg[..8].copy_from_slice(&sector.to_le_bytes());
        seg[8..12].copy_from_slice(&sectors.to_le_bytes());
        seg[12..].copy_from_slice(&flags.to_le_bytes());
        let len = if rng.one_in(8) { rng.below(40) } else { 16 };
        let at = p.place(rng, len, !readable_data);
        let mut bytes = seg.to_vec();
        bytes.resize(len as usize, 0x5a);
        let _ = mem.write_slice(&bytes, GuestAddress(at));
        descs.push(D(at, len as u32, !readable_data));
    } else {
        let total = if t == VIRTIO_BLK_T_GET_ID && rng.one_in(2) {
            rng.below(40)
        } else {
            data_len(rng)
        };
        let mut left = total;
        while left > 0 {
            let n = if rng.one_in(2) {
                left
            } else {
                rng.range(1, left)
            };
            let at = p.place(rng, n, !readable_data);
            if readable_data {
                let _ = mem.write_slice(&rng.bytes(n as usize), GuestAddress(at));
            }
            descs.push(D(at, n as u32, !readable_data));
            left -= n;
        }
    }
    // The status byte, alone or at the end of the last data buffer.
    match descs.last_mut() {
        Some(last) if last.2 && rng.one_in(3) => last.1 += 1,
        _ => {
            let at = p.place(rng, 1, true);
            descs.push(D(at, 1, true));
        }
    }
    // Mangling.
    if rng.one_in(8) {
        descs.pop();
    }
    if rng.one_in(8) && !descs.is_empty() {
        let i = rng.below(descs.len() as u64) as usize;
        descs[i].2 = !descs[i].2;
        if descs[i].2 && descs[i].0 < RINGS_END {
            descs[i].0 += RINGS_END;
        }
    }
    if rng.one_in(6) {
        let i = rng.below(descs.len() as u64 + 1) as usize;
        let writable = rng.one_in(2);
        let at = p.place(rng, 0, writable);
        descs.insert(i, D(at, 0, writable));
    }
    if rng.one_in(40) {
        // More than MAX_TRANSFER_BYTES, all in guest memory: the same
        // 15 MiB over and over.
        let writable = rng.one_in(2);
        let at = descs.len().saturating_sub(1);
        for _ in 0..9 {
            descs.insert(at, D(RINGS_END, (15 << 20) as u32, writable));
        }
    }
    descs.truncate(16);
    descs
}

/// Whether the chain's non-empty buffers are pairwise disjoint.
fn disjoint(descs: &[D]) -> bool {
    let mut spans: Vec<(u64, u64)> = descs
        .iter()
        .filter(|d| d.1 > 0)
        .map(|d| (d.0, d.0.saturating_add(u64::from(d.1))))
        .collect();
    spans.sort_unstable();
    spans.windows(2).all(|w| w[0].1 <= w[1].0)
}

fn blk_disk(img: &TempImage, readonly: bool) -> Disk {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(!readonly)
        .open(&img.path)
        .unwrap();
    Disk::new(file, SECTORS, readonly, *b"adversarial-serial-1")
}

/// Reads `segs` of guest memory back to back.
fn read_segs(mem: &GuestMemory, segs: &[(u64, u64)], limit: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for &(a, n) in segs {
        let n = (n as usize).min(limit - out.len());
        let mut b = vec![0u8; n];
        mem.read_slice(&mut b, GuestAddress(a)).unwrap();
        out.extend(b);
    }
    out
}

fn blk_chains(seed: u64, steps: usize, readonly: bool) -> BTreeMap<u8, u32> {
    let mut rng = Rng::new(seed);
    let mem = blk_mem();
    let mut image = rng.bytes((SECTORS * 512) as usize);
    let img = TempImage::new(&image);
    let disk = blk_disk(&img, readonly);
    let metrics = BlockMetrics::default();
    let mut statuses = BTreeMap::new();
    for step in 0..steps {
        let ctx = format!("seed {seed} step {step} readonly {readonly}");
        let descs = gen_blk_chain(&mut rng, &mem);
        let want = predict(&descs, &mem, readonly);
        let check_guest = disjoint(&descs);
        let used = run_chain(&mem, &descs, |c| disk.process_chain(c, &mem, &metrics));
        assert_eq!(used, want.used, "{ctx}: used length");
        if let Some((at, status)) = want.status {
            let got: u8 = mem.read_obj(GuestAddress(at)).unwrap();
            assert_eq!(got, status, "{ctx}: status");
            *statuses.entry(status).or_insert(0) += 1;
        }
        match want.effect {
            Effect::None => {}
            Effect::Write(offset, bytes) => {
                image[offset as usize..offset as usize + bytes.len()].copy_from_slice(&bytes);
            }
            Effect::Zero(offset, len) => {
                image[offset as usize..(offset + len) as usize].fill(0);
            }
            Effect::Discard(offset, len) => {
                let range = offset as usize..(offset + len) as usize;
                let now = img.content();
                assert!(
                    now[range.clone()] == image[range.clone()]
                        || now[range.clone()].iter().all(|&b| b == 0),
                    "{ctx}: discard"
                );
                image[range.clone()].copy_from_slice(&now[range]);
            }
            Effect::ReadInto(offset, segs) if check_guest => {
                let got = read_segs(&mem, &segs, usize::MAX);
                assert!(
                    got[..] == image[offset as usize..offset as usize + got.len()],
                    "{ctx}: data read"
                );
            }
            Effect::Id(segs, n) if check_guest => {
                assert_eq!(
                    read_segs(&mem, &segs, n),
                    b"adversarial-serial-1"[..n],
                    "{ctx}: id"
                );
            }
            Effect::ReadInto(..) | Effect::Id(..) => {}
        }
        assert!(img.content() == image, "{ctx}: image content");
    }
    // Well-formed requests still work: read everything, write, read back.
    let data = 0x10_0000;
    let header = |t: u32, sector: u64| {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&t.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(0x2000)).unwrap();
    };
    header(VIRTIO_BLK_T_IN, 0);
    let chain = [
        D(0x2000, 16, false),
        D(data, (SECTORS * 512) as u32, true),
        D(0x3000, 1, true),
    ];
    let used = run_chain(&mem, &chain, |c| disk.process_chain(c, &mem, &metrics));
    assert_eq!(used, (SECTORS * 512) as u32 + 1);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(0x3000)).unwrap(), OK);
    assert!(read_segs(&mem, &[(data, SECTORS * 512)], usize::MAX) == image);
    if !readonly {
        header(VIRTIO_BLK_T_OUT, 3);
        mem.write_slice(&[0x77; 512], GuestAddress(data)).unwrap();
        let chain = [
            D(0x2000, 16, false),
            D(data, 512, false),
            D(0x3000, 1, true),
        ];
        assert_eq!(
            run_chain(&mem, &chain, |c| disk.process_chain(c, &mem, &metrics)),
            1
        );
        assert_eq!(img.content()[3 * 512..4 * 512], [0x77; 512]);
    }
    assert_eq!(img.content().len() as u64, SECTORS * 512, "image size");
    statuses
}

#[test]
fn random_block_chains_get_the_status_the_spec_gives() {
    let mut statuses = BTreeMap::new();
    for (seed, readonly) in [(1, false), (2, false), (3, true)] {
        for (s, n) in blk_chains(seed, 2500, readonly) {
            *statuses.entry(s).or_insert(0) += n;
        }
    }
    // Every outcome happens, and plenty of requests succeed.
    assert_eq!(statuses.len(), 3, "{statuses:?}");
    assert!(statuses.values().all(|&n| n > 100), "{statuses:?}");
}

/// The parser alone, on random descriptor lists far longer than a queue:
/// whatever it accepts is consistent with the chain.
#[test]
fn random_descriptor_lists_parse_or_fail_cleanly() {
    let mem = blk_mem();
    let mut rng = Rng::new(11);
    let mut parsed = 0;
    for _ in 0..50_000 {
        let n = rng.below(40);
        // Half the lists are readable-then-writable, as drivers send them.
        let ordered = rng.one_in(2);
        let split = rng.below(n + 1);
        let descs: Vec<Descriptor> = (0..n)
            .map(|i| {
                let len = match rng.below(6) {
                    0 => 0,
                    1 => rng.next() as u32,
                    _ => rng.below(64) as u32 + 8,
                };
                let addr = match rng.below(if ordered { 60 } else { 6 }) {
                    0 => rng.next(),
                    1 => u64::MAX - rng.below(64),
                    _ => rng.below(BLK_END + 64),
                };
                let flags = match (ordered, i < split) {
                    (true, true) => 0,
                    (true, false) => 2,
                    _ => rng.next() as u16,
                };
                Descriptor::new(addr, len, flags, rng.next() as u16)
            })
            .collect();
        let Ok(layout) = Layout::new(descs.iter().copied()) else {
            continue;
        };
        let total = |segs: &[super::block::request::Segment]| -> u64 {
            segs.iter().map(|s| u64::from(s.len)).sum()
        };
        assert!(layout.writable.iter().all(|s| s.len > 0));
        assert!(layout.readable.iter().all(|s| s.len > 0));
        let Ok(req) = Request::parse(&layout, &mem) else {
            continue;
        };
        parsed += 1;
        assert_eq!(req.data_out_len + 16, total(&layout.readable));
        assert_eq!(req.data_out_len, total(&req.data_out));
        assert_eq!(req.data_in_len, total(&req.data_in));
        assert!(!layout.misordered);
    }
    assert!(parsed > 1000, "{parsed} parsed");
}

// ---------------------------------------------------------------------------
// PCI configuration access and the buses
// ---------------------------------------------------------------------------

/// A plain endpoint: a 64-bit BAR and one capability.
struct Plain(PciConfigSpace);

impl PciDevice for Plain {
    fn config_read(&mut self, reg: usize) -> u32 {
        self.0.read_reg(reg)
    }
    fn config_write(&mut self, reg: usize, offset: usize, data: &[u8]) {
        self.0.write(reg, offset, data)
    }
}

const CF8: u64 = 0xcf8;
const ECAM: u64 = 0xe000_0000;
/// Two buses' worth: bus 1 is absent.
const ECAM_SIZE: u64 = 0x20_0000;

/// The ids and class of slots 0 (host bridge), 1 (virtio), 2 (plain).
const IDS: [(u32, u32); 3] = [
    (0x0008_1b36, 0x0600_0000),
    (0x1044_1af4, 0xff00_0001),
    (0x1234_abcd, 0x0c03_3000),
];

fn pci_buses() -> (Bus, Bus) {
    let mut seg = PciSegment::new();
    let (virtio, _, _) = probe_transport();
    assert_eq!(seg.add(Arc::new(Mutex::new(virtio))).unwrap(), 1);
    let mut cfg = PciConfigSpace::new(0xabcd, 0x1234, 0x0c_03_30, 0, 0);
    cfg.add_bar(0, 0x10_0000_0000, 1 << 20, BarKind::Mem64Prefetch);
    cfg.add_capability(0x05, &[0; 10], &[0xff, 0xff]);
    assert_eq!(seg.add(Arc::new(Mutex::new(Plain(cfg)))).unwrap(), 2);
    let seg = Arc::new(Mutex::new(seg));
    let io = Bus::new();
    io.insert(Arc::new(Mutex::new(PciConfigIo::new(seg.clone()))), CF8, 8)
        .unwrap();
    let mmio = Bus::new();
    mmio.insert(
        Arc::new(Mutex::new(PciConfigMmio::new(seg))),
        ECAM,
        ECAM_SIZE,
    )
    .unwrap();
    (io, mmio)
}

/// Reads register `reg` of bus 0 `dev` through 0xCF8/0xCFC.
fn cf8_read(io: &Bus, dev: u32, reg: u32) -> u32 {
    let addr = 0x8000_0000 | (dev << 11) | (reg << 2);
    assert!(io.write(CF8, &addr.to_le_bytes()));
    let mut v = [0u8; 4];
    assert!(io.read(CF8 + 4, &mut v));
    u32::from_le_bytes(v)
}

fn ecam_read(mmio: &Bus, dev: u64, reg: u64) -> u32 {
    let mut v = [0u8; 4];
    assert!(mmio.read(ECAM + (dev << 15) + reg * 4, &mut v));
    u32::from_le_bytes(v)
}

/// A random 0xCF8 address: enabled or not, bus 0 or another, a present
/// slot or not, function 0 or not, any register.
fn cf8_address(rng: &mut Rng) -> u32 {
    if rng.one_in(6) {
        return rng.next() as u32;
    }
    let enable = if rng.one_in(8) { 0 } else { 0x8000_0000 };
    let bus = if rng.one_in(8) { rng.below(256) } else { 0 };
    let dev = if rng.one_in(4) {
        rng.below(32)
    } else {
        rng.below(3)
    };
    let func = if rng.one_in(8) { rng.below(8) } else { 0 };
    let reg = rng.below(64);
    enable | (bus << 16) as u32 | (dev << 11) as u32 | (func << 8) as u32 | (reg << 2) as u32
}

#[test]
fn pci_config_access_at_random_offsets_and_lengths() {
    let (io, mmio) = pci_buses();
    let mut direct_io = {
        let mut seg = PciSegment::new();
        seg.add(Arc::new(Mutex::new(probe_transport().0))).unwrap();
        let seg = Arc::new(Mutex::new(seg));
        (PciConfigIo::new(seg.clone()), PciConfigMmio::new(seg))
    };
    let mut rng = Rng::new(3);
    for step in 0..100_000 {
        let ctx = format!("step {step}");
        let len = match rng.below(6) {
            0 => rng.below(17) as usize,
            _ => rng.pick(&[1, 2, 4]),
        };
        match rng.below(10) {
            0 => assert!(io.write(CF8, &cf8_address(&mut rng).to_le_bytes())),
            1 | 2 => {
                // Anywhere around the two ports, any length.
                let addr = CF8 - 2 + rng.below(12);
                let in_range = addr >= CF8 && addr + len as u64 <= CF8 + 8;
                if rng.one_in(2) {
                    let mut data = vec![0x5a; len];
                    assert_eq!(io.read(addr, &mut data), in_range, "{ctx}");
                    let sub = addr.wrapping_sub(CF8 + 4);
                    let bad =
                        sub >= 4 || !matches!(len, 1 | 2 | 4) || !sub.is_multiple_of(len as u64);
                    if in_range && addr >= CF8 + 4 && bad {
                        assert!(data.iter().all(|&b| b == 0xff), "{ctx}: {data:?}");
                    }
                } else {
                    let data = rng.bytes(len);
                    assert_eq!(io.write(addr, &data), in_range, "{ctx}");
                }
            }
            3..=5 => {
                let addr = match rng.below(6) {
                    0 => ECAM - 4 + rng.below(8),
                    1 => ECAM + ECAM_SIZE - 8 + rng.below(16),
                    2 => ECAM + rng.below(ECAM_SIZE),
                    _ => ECAM + (rng.below(4) << 15) + rng.below(0x1000),
                };
                let in_range = addr >= ECAM && addr.saturating_add(len as u64) <= ECAM + ECAM_SIZE;
                if rng.one_in(2) {
                    let mut data = vec![0x5a; len];
                    assert_eq!(mmio.read(addr, &mut data), in_range, "{ctx}");
                    let off = addr.wrapping_sub(ECAM);
                    let (bus, dev, func) = (off >> 20, (off >> 15) & 0x1f, (off >> 12) & 7);
                    let valid = matches!(len, 1 | 2 | 4)
                        && (off & 3) % len as u64 == 0
                        && (off & 3) + len as u64 <= 4;
                    let absent = bus != 0 || func != 0 || dev > 2;
                    if in_range && (!valid || absent) {
                        assert!(data.iter().all(|&b| b == 0xff), "{ctx}: {off:#x} {data:?}");
                    }
                } else {
                    let data = rng.bytes(len);
                    assert_eq!(mmio.write(addr, &data), in_range, "{ctx}");
                }
            }
            6 | 7 => {
                // The devices called directly, with any offset at all.
                let offset = match rng.below(3) {
                    0 => rng.next(),
                    1 => u64::MAX - rng.below(16),
                    _ => rng.below(16),
                };
                let mut data = vec![0u8; rng.below(17) as usize];
                if rng.one_in(2) {
                    direct_io.0.read(offset, &mut data);
                    direct_io.1.read(offset, &mut data);
                } else {
                    direct_io.0.write(offset, &data);
                    direct_io.1.write(offset, &data);
                }
            }
            _ => {
                // Read-only identity survives whatever was written.
                let dev = rng.below(3);
                let (id, class) = IDS[dev as usize];
                assert_eq!(ecam_read(&mmio, dev, 0), id, "{ctx}");
                assert_eq!(ecam_read(&mmio, dev, 2) & !0xff, class & !0xff, "{ctx}");
            }
        }
    }
    // Well-formed accesses, both ways.
    for (dev, &(id, _)) in IDS.iter().enumerate() {
        assert_eq!(cf8_read(&io, dev as u32, 0), id);
        assert_eq!(ecam_read(&mmio, dev as u64, 0), id);
    }
    assert_eq!(cf8_read(&io, 3, 0), 0xffff_ffff, "absent slot");
    // BAR sizing on the plain device still works.
    let bar = ECAM + (2 << 15) + 0x10;
    let old = [ecam_read(&mmio, 2, 4), ecam_read(&mmio, 2, 5)];
    assert!(mmio.write(bar, &[0xff; 4]));
    assert!(mmio.write(bar + 4, &[0xff; 4]));
    assert_eq!(ecam_read(&mmio, 2, 4), 0xfff0_000c);
    assert_eq!(ecam_read(&mmio, 2, 5), 0xffff_ffff);
    assert!(mmio.write(bar, &old[0].to_le_bytes()));
    assert!(mmio.write(bar + 4, &old[1].to_le_bytes()));
    assert_eq!([ecam_read(&mmio, 2, 4), ecam_read(&mmio, 2, 5)], old);
}

/// The (offset, length) of each access a device saw.
type Seen = Arc<Mutex<Vec<(u64, usize)>>>;

/// A bus device that checks every access lies within its range.
struct Checked {
    len: u64,
    seen: Seen,
}

impl BusDevice for Checked {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        assert!(offset
            .checked_add(data.len() as u64)
            .is_some_and(|e| e <= self.len));
        self.seen.lock().unwrap().push((offset, data.len()));
        data.fill(offset as u8);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        assert!(offset
            .checked_add(data.len() as u64)
            .is_some_and(|e| e <= self.len));
        self.seen.lock().unwrap().push((offset, data.len()));
    }
}

/// Random ranges inserted and removed (empty, overlapping, at the top of
/// the address space) and random accesses (lengths 0 to 16): the bus
/// agrees with a model, and devices only see accesses inside their range.
#[test]
fn bus_dispatch_with_random_ranges_offsets_and_lengths() {
    let mut rng = Rng::new(21);
    let bus = Bus::new();
    // base -> (len, what the device saw).
    let mut model: BTreeMap<u64, (u64, Seen)> = BTreeMap::new();
    let near = |rng: &mut Rng| match rng.below(6) {
        0 => rng.next(),
        1 => u64::MAX - rng.below(0x40),
        _ => rng.below(0x400),
    };
    let (mut claimed, mut inserted) = (0, 0);
    for step in 0..40_000 {
        let ctx = format!("step {step}");
        match rng.below(10) {
            0 | 1 => {
                let base = near(&mut rng);
                let len = match rng.below(8) {
                    0 => 0,
                    1 => u64::MAX - rng.below(2),
                    2 => rng.next(),
                    _ => rng.range(1, 0x40),
                };
                let seen = Arc::new(Mutex::new(Vec::new()));
                let dev = Arc::new(Mutex::new(Checked {
                    len,
                    seen: seen.clone(),
                }));
                let want = if len == 0 {
                    Err(BusError::Empty(base))
                } else {
                    let overlaps = base.checked_add(len).is_none()
                        || model.iter().any(|(&b, &(l, _))| {
                            u128::from(base) < u128::from(b) + u128::from(l)
                                && u128::from(b) < u128::from(base) + u128::from(len)
                        });
                    if overlaps {
                        Err(BusError::Overlap { base, len })
                    } else {
                        Ok(())
                    }
                };
                assert_eq!(bus.insert(dev, base, len), want, "{ctx}");
                if want.is_ok() {
                    model.insert(base, (len, seen));
                    inserted += 1;
                }
            }
            2 => {
                let base = match model.keys().next() {
                    Some(&b) if rng.one_in(2) => b,
                    _ => near(&mut rng),
                };
                assert_eq!(bus.remove(base).is_some(), model.remove(&base).is_some());
            }
            _ => {
                let addr = near(&mut rng);
                let len = rng.below(17) as usize;
                let target = model
                    .range(..=addr)
                    .next_back()
                    .map(|(&b, (l, seen))| (b, *l, seen.clone()))
                    .filter(|&(b, l, _)| {
                        (addr - b).checked_add(len as u64).is_some_and(|e| e <= l)
                    });
                let mut data = vec![0u8; len];
                let got = if rng.one_in(2) {
                    bus.read(addr, &mut data)
                } else {
                    bus.write(addr, &data)
                };
                assert_eq!(got, target.is_some(), "{ctx}: {addr:#x}+{len}");
                if let Some((b, _, seen)) = target {
                    assert_eq!(seen.lock().unwrap().pop(), Some((addr - b, len)), "{ctx}");
                    claimed += 1;
                }
            }
        }
    }
    assert!(
        claimed > 1000 && inserted > 20,
        "{claimed} claimed, {inserted} inserted"
    );
}
