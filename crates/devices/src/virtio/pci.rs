//! The virtio-pci modern transport (virtio 1.3 §4.1) with MSI-X.
//!
//! One 32-bit memory BAR holds every structure:
//!
//! | offset   | structure                                  |
//! |----------|--------------------------------------------|
//! | 0x0000   | common configuration                       |
//! | 0x1000   | ISR status                                 |
//! | 0x2000   | device-specific configuration              |
//! | 0x3000   | notifications, 4 bytes per queue (ioeventfd)|
//! | 0x4000   | MSI-X table                                |
//! | 0x6000   | MSI-X pending bits                         |
//!
//! Writing DRIVER_OK activates the device with the queues the driver
//! enabled; writing 0 to the status resets it and takes the queues back.

use std::sync::atomic::{AtomicU16, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{
    ActivateContext, ActiveQueue, Interrupt, InterruptKind, VirtioDevice, VIRTIO_F_VERSION_1,
};
use crate::bus::BusDevice;
use crate::pci::msix::{MsiRouter, Msix, MSIX_CAP_ID};
use crate::pci::{BarKind, PciConfigSpace, PciDevice};
use crate::GuestMemory;

const COMMON_OFFSET: u64 = 0x0000;
const COMMON_SIZE: u64 = 0x40;
const ISR_OFFSET: u64 = 0x1000;
const DEVICE_CFG_OFFSET: u64 = 0x2000;
const DEVICE_CFG_SIZE: u64 = 0x1000;
const NOTIFY_OFFSET: u64 = 0x3000;
const NOTIFY_MULTIPLIER: u32 = 4;
const MSIX_TABLE_OFFSET: u64 = 0x4000;
const MSIX_PBA_OFFSET: u64 = 0x6000;
/// Size of the transport's BAR 0.
pub const BAR_SIZE: u64 = 0x8000;
/// Most queues a device may have (notify area and MSI-X table limits).
pub const MAX_QUEUES: usize = 256;

const VIRTIO_PCI_CAP_COMMON_CFG: u8 = 1;
const VIRTIO_PCI_CAP_NOTIFY_CFG: u8 = 2;
const VIRTIO_PCI_CAP_ISR_CFG: u8 = 3;
const VIRTIO_PCI_CAP_DEVICE_CFG: u8 = 4;
const PCI_CAP_ID_VNDR: u8 = 0x09;
const NO_VECTOR: u16 = 0xffff;

const STATUS_ACKNOWLEDGE: u8 = 1;
const STATUS_DRIVER: u8 = 2;
const STATUS_DRIVER_OK: u8 = 4;
const STATUS_FEATURES_OK: u8 = 8;
const STATUS_NEEDS_RESET: u8 = 0x40;
const STATUS_FAILED: u8 = 0x80;

/// Transport counters of one device, readable while it runs.
#[derive(Debug, Default)]
pub struct TransportMetrics {
    /// Interrupts signalled to the driver (config and queue).
    pub interrupts: AtomicU64,
    /// Queue notifications (kicks) from the driver.
    pub notifications: Arc<AtomicU64>,
}

/// Maps virtio interrupt kinds to MSI-X vectors.
struct VectorMap {
    metrics: Arc<TransportMetrics>,
    config: AtomicU16,
    queues: Vec<AtomicU16>,
    isr: AtomicU8,
    msix: Arc<Msix>,
}

impl Interrupt for VectorMap {
    fn trigger(&self, kind: InterruptKind) {
        let vector = match kind {
            InterruptKind::Config => {
                self.isr.fetch_or(2, Ordering::SeqCst);
                self.config.load(Ordering::Acquire)
            }
            InterruptKind::Queue(q) => {
                self.isr.fetch_or(1, Ordering::SeqCst);
                match self.queues.get(usize::from(q)) {
                    Some(v) => v.load(Ordering::Acquire),
                    None => NO_VECTOR,
                }
            }
        };
        if vector != NO_VECTOR {
            self.metrics.interrupts.fetch_add(1, Ordering::Relaxed);
            self.msix.trigger(vector);
        }
    }
}

/// A virtio device on the PCI bus.
pub struct VirtioPciDevice {
    name: String,
    config: PciConfigSpace,
    msix_cap: usize,
    bar: u64,
    device: Box<dyn VirtioDevice>,
    vectors: Arc<VectorMap>,
    metrics: Arc<TransportMetrics>,
    mem: Arc<GuestMemory>,
    queues: Vec<Queue>,
    kicks: Vec<Option<EventFd>>,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    config_generation: u8,
    queue_select: u16,
    active: bool,
}

/// Errors creating the transport.
#[derive(Debug, thiserror::Error)]
pub enum VirtioPciError {
    #[error("device has {0} queues; at most {MAX_QUEUES} are supported")]
    TooManyQueues(usize),
    #[error("cannot create the device's interrupt lines or eventfds")]
    Io(#[from] std::io::Error),
    #[error("invalid queue size {0} (must be a power of two, 1..=32768)")]
    QueueSize(u16),
}

fn vendor_cap(cfg_type: u8, offset: u64, length: u64, extra: &[u8]) -> Vec<u8> {
    // cap_len, cfg_type, bar, id, padding[2], offset, length (+ extra)
    let mut body = vec![(16 + extra.len()) as u8, cfg_type, 0, 0, 0, 0];
    body.extend_from_slice(&(offset as u32).to_le_bytes());
    body.extend_from_slice(&(length as u32).to_le_bytes());
    body.extend_from_slice(extra);
    body
}

impl VirtioPciDevice {
    /// Wraps `device` with its BAR at `bar` (BAR_SIZE bytes, aligned).
    pub fn new(
        name: &str,
        device: Box<dyn VirtioDevice>,
        mem: Arc<GuestMemory>,
        router: Arc<dyn MsiRouter>,
        bar: u64,
    ) -> Result<Self, VirtioPciError> {
        let sizes = device.queue_max_sizes().to_vec();
        if sizes.len() > MAX_QUEUES {
            return Err(VirtioPciError::TooManyQueues(sizes.len()));
        }
        let queues = sizes
            .iter()
            .map(|&s| Queue::new(s).map_err(|_| VirtioPciError::QueueSize(s)))
            .collect::<Result<Vec<_>, _>>()?;
        let kicks = sizes
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK).map(Some))
            .collect::<std::io::Result<Vec<_>>>()?;
        let msix = Arc::new(Msix::new(sizes.len() as u16 + 1, router)?);
        let device_id = 0x1040 + device.device_type() as u16;
        let class = match device.device_type() {
            super::device_type::BLOCK => 0x01_80_00,
            super::device_type::GPU => 0x03_80_00,
            super::device_type::INPUT => 0x09_80_00,
            _ => 0xff_00_00,
        };
        let mut config = PciConfigSpace::new(0x1af4, device_id, class, 0x1af4, 0x1100);
        config.set_revision(1);
        config.add_bar(0, bar, BAR_SIZE, BarKind::Mem32);
        let table_size = msix.vectors() as u16 - 1;
        let mut msix_body = table_size.to_le_bytes().to_vec();
        msix_body.extend_from_slice(&(MSIX_TABLE_OFFSET as u32).to_le_bytes());
        msix_body.extend_from_slice(&(MSIX_PBA_OFFSET as u32).to_le_bytes());
        let msix_cap = config.add_capability(MSIX_CAP_ID, &msix_body, &[0, 0xc0]);
        config.add_capability(
            PCI_CAP_ID_VNDR,
            &vendor_cap(VIRTIO_PCI_CAP_COMMON_CFG, COMMON_OFFSET, COMMON_SIZE, &[]),
            &[],
        );
        config.add_capability(
            PCI_CAP_ID_VNDR,
            &vendor_cap(VIRTIO_PCI_CAP_ISR_CFG, ISR_OFFSET, 1, &[]),
            &[],
        );
        config.add_capability(
            PCI_CAP_ID_VNDR,
            &vendor_cap(
                VIRTIO_PCI_CAP_DEVICE_CFG,
                DEVICE_CFG_OFFSET,
                DEVICE_CFG_SIZE,
                &[],
            ),
            &[],
        );
        config.add_capability(
            PCI_CAP_ID_VNDR,
            &vendor_cap(
                VIRTIO_PCI_CAP_NOTIFY_CFG,
                NOTIFY_OFFSET,
                sizes.len().max(1) as u64 * u64::from(NOTIFY_MULTIPLIER),
                &NOTIFY_MULTIPLIER.to_le_bytes(),
            ),
            &[],
        );
        let metrics = Arc::new(TransportMetrics::default());
        let vectors = Arc::new(VectorMap {
            metrics: metrics.clone(),
            config: AtomicU16::new(NO_VECTOR),
            queues: sizes.iter().map(|_| AtomicU16::new(NO_VECTOR)).collect(),
            isr: AtomicU8::new(0),
            msix,
        });
        Ok(Self {
            name: name.to_string(),
            config,
            msix_cap,
            bar,
            device,
            vectors,
            metrics,
            mem,
            queues,
            kicks,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
            queue_select: 0,
            active: false,
        })
    }

    /// The device's name (e.g. `virtio-blk-0`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Interrupt and notification counters.
    pub fn transport_metrics(&self) -> Arc<TransportMetrics> {
        self.metrics.clone()
    }

    /// The device's own counters (see [`VirtioDevice::metrics`]).
    pub fn device_metrics(&self) -> Option<serde_json::Value> {
        self.device.metrics()
    }

    /// The BAR's guest address.
    pub fn bar_address(&self) -> u64 {
        self.bar
    }

    /// (guest address, eventfd) of each queue's notification, for ioeventfds.
    pub fn notify_eventfds(&self) -> Vec<(u64, &EventFd)> {
        self.kicks
            .iter()
            .enumerate()
            .filter_map(|(i, k)| {
                k.as_ref().map(|k| {
                    (
                        self.bar + NOTIFY_OFFSET + i as u64 * u64::from(NOTIFY_MULTIPLIER),
                        k,
                    )
                })
            })
            .collect()
    }

    /// Device features, always offering VERSION_1.
    fn device_features(&self) -> u64 {
        self.device.features() | VIRTIO_F_VERSION_1
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(usize::from(self.queue_select))
    }

    fn reset(&mut self) {
        if self.active {
            if let Some(kicks) = self.device.reset() {
                for (slot, k) in self.kicks.iter_mut().zip(kicks) {
                    *slot = Some(k);
                }
            }
            self.active = false;
        }
        for q in self.queues.iter_mut() {
            q.reset();
        }
        for v in &self.vectors.queues {
            v.store(NO_VECTOR, Ordering::Release);
        }
        self.vectors.config.store(NO_VECTOR, Ordering::Release);
        self.vectors.isr.store(0, Ordering::SeqCst);
        self.driver_features = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.queue_select = 0;
        self.status = 0;
    }

    fn activate(&mut self) {
        if self.active {
            return;
        }
        let event_idx = self.driver_features & super::VIRTIO_RING_F_EVENT_IDX != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, q) in self.queues.iter_mut().enumerate() {
            q.set_event_idx(event_idx);
            if q.ready() && !q.is_valid(self.mem.as_ref()) {
                log::warn!("{}: queue {i} is not valid; device needs reset", self.name);
                self.status |= STATUS_NEEDS_RESET;
                return;
            }
        }
        for (i, q) in self.queues.iter().enumerate() {
            let Some(kick) = self.kicks[i].take() else {
                log::error!("{}: queue {i} lost its eventfd", self.name);
                self.status |= STATUS_NEEDS_RESET;
                return;
            };
            queues.push(ActiveQueue {
                queue: copy_queue(q),
                kick,
            });
        }
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            queues,
            interrupt: self.vectors.clone(),
            acked_features: self.driver_features,
            notifications: self.metrics.notifications.clone(),
        };
        match self.device.activate(ctx) {
            Ok(()) => self.active = true,
            Err(e) => {
                log::error!("{}: activation failed: {e}", self.name);
                self.status |= STATUS_NEEDS_RESET;
                // The kick eventfds went with the context and are gone: the
                // device cannot be activated again (this needs a device whose
                // worker thread fails to start, not a guest action).
            }
        }
    }

    fn common_read(&mut self, offset: u64, data: &mut [u8]) {
        let value: u64 = match (offset, data.len()) {
            (0x00, 4) => u64::from(self.device_feature_select),
            (0x04, 4) => match self.device_feature_select {
                0 => self.device_features() & 0xffff_ffff,
                1 => self.device_features() >> 32,
                _ => 0,
            },
            (0x08, 4) => u64::from(self.driver_feature_select),
            (0x0c, 4) => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            (0x10, 2) => u64::from(self.vectors.config.load(Ordering::Acquire)),
            (0x12, 2) => self.queues.len() as u64,
            (0x14, 1) => u64::from(self.status),
            (0x15, 1) => u64::from(self.config_generation),
            (0x16, 2) => u64::from(self.queue_select),
            (0x18, 2) => self.selected_queue().map_or(0, |q| u64::from(q.size())),
            (0x1a, 2) => self
                .vectors
                .queues
                .get(usize::from(self.queue_select))
                .map_or(u64::from(NO_VECTOR), |v| {
                    u64::from(v.load(Ordering::Acquire))
                }),
            (0x1c, 2) => self.selected_queue().map_or(0, |q| u64::from(q.ready())),
            (0x1e, 2) if usize::from(self.queue_select) < self.queues.len() => {
                u64::from(self.queue_select)
            }
            (0x20, 4) | (0x20, 8) => self.selected_queue().map_or(0, |q| q.desc_table()),
            (0x24, 4) => self.selected_queue().map_or(0, |q| q.desc_table() >> 32),
            (0x28, 4) | (0x28, 8) => self.selected_queue().map_or(0, |q| q.avail_ring()),
            (0x2c, 4) => self.selected_queue().map_or(0, |q| q.avail_ring() >> 32),
            (0x30, 4) | (0x30, 8) => self.selected_queue().map_or(0, |q| q.used_ring()),
            (0x34, 4) => self.selected_queue().map_or(0, |q| q.used_ring() >> 32),
            _ => 0,
        };
        let bytes = value.to_le_bytes();
        data.copy_from_slice(&bytes[..data.len()]);
    }

    fn common_write(&mut self, offset: u64, data: &[u8]) {
        let mut raw = [0u8; 8];
        raw[..data.len().min(8)].copy_from_slice(&data[..data.len().min(8)]);
        let value = u64::from_le_bytes(raw);
        let v32 = value as u32;
        let v16 = value as u16;
        // Queue configuration is frozen once the driver is running.
        let can_configure_queue = self.status & STATUS_DRIVER_OK == 0;
        match (offset, data.len()) {
            (0x00, 4) => self.device_feature_select = v32,
            (0x08, 4) => self.driver_feature_select = v32,
            (0x0c, 4) if self.status & STATUS_FEATURES_OK == 0 => {
                let offered = self.device_features();
                match self.driver_feature_select {
                    0 => {
                        self.driver_features = (self.driver_features & !0xffff_ffff)
                            | (u64::from(v32) & offered & 0xffff_ffff)
                    }
                    1 => {
                        self.driver_features = (self.driver_features & 0xffff_ffff)
                            | ((u64::from(v32) << 32) & offered)
                    }
                    _ => {}
                }
            }
            (0x10, 2) => self
                .vectors
                .config
                .store(self.valid_vector(v16), Ordering::Release),
            (0x14, 1) => self.write_status(value as u8),
            (0x16, 2) => self.queue_select = v16,
            (0x18, 2) if can_configure_queue => {
                if let Some(q) = self.selected_queue() {
                    // Only powers of two up to the maximum are valid sizes.
                    if v16.is_power_of_two() && v16 <= q.max_size() {
                        q.set_size(v16);
                    }
                }
            }
            (0x1a, 2) => {
                let vector = self.valid_vector(v16);
                if let Some(v) = self.vectors.queues.get(usize::from(self.queue_select)) {
                    v.store(vector, Ordering::Release);
                }
            }
            (0x1c, 2) if can_configure_queue => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v16 == 1);
                }
            }
            (0x20, 4) | (0x20, 8) | (0x24, 4) if can_configure_queue => {
                let (lo, hi) = split(offset - 0x20, data.len(), value);
                if let Some(q) = self.selected_queue() {
                    q.set_desc_table_address(lo, hi);
                }
            }
            (0x28, 4) | (0x28, 8) | (0x2c, 4) if can_configure_queue => {
                let (lo, hi) = split(offset - 0x28, data.len(), value);
                if let Some(q) = self.selected_queue() {
                    q.set_avail_ring_address(lo, hi);
                }
            }
            (0x30, 4) | (0x30, 8) | (0x34, 4) if can_configure_queue => {
                let (lo, hi) = split(offset - 0x30, data.len(), value);
                if let Some(q) = self.selected_queue() {
                    q.set_used_ring_address(lo, hi);
                }
            }
            _ => log::debug!("{}: ignored common config write at {offset:#x}", self.name),
        }
    }

    /// A vector the guest may use: in range, or NO_VECTOR.
    fn valid_vector(&self, v: u16) -> u16 {
        if usize::from(v) < self.vectors.msix.vectors() {
            v
        } else {
            NO_VECTOR
        }
    }

    fn write_status(&mut self, status: u8) {
        if status == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        // FEATURES_OK only sticks when VERSION_1 was accepted.
        let mut status = status;
        if status & STATUS_FEATURES_OK != 0
            && old & STATUS_FEATURES_OK == 0
            && self.driver_features & VIRTIO_F_VERSION_1 == 0
        {
            status &= !STATUS_FEATURES_OK;
        }
        self.status = status | (old & STATUS_NEEDS_RESET);
        let ready = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
        if self.status & ready == ready
            && old & STATUS_DRIVER_OK == 0
            && self.status & (STATUS_FAILED | STATUS_NEEDS_RESET) == 0
        {
            self.activate();
        }
    }
}

/// A fresh queue with the configuration the driver wrote into `q`.
fn copy_queue(q: &Queue) -> Queue {
    let mut c = Queue::new(q.max_size()).unwrap_or_else(|_| unreachable!("max size was valid"));
    c.set_size(q.size());
    let halves = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
    let (lo, hi) = halves(q.desc_table());
    c.set_desc_table_address(lo, hi);
    let (lo, hi) = halves(q.avail_ring());
    c.set_avail_ring_address(lo, hi);
    let (lo, hi) = halves(q.used_ring());
    c.set_used_ring_address(lo, hi);
    c.set_event_idx(q.event_idx_enabled());
    c.set_ready(q.ready());
    c
}

/// Splits a queue address write into (low, high) halves.
fn split(rel: u64, len: usize, value: u64) -> (Option<u32>, Option<u32>) {
    match (rel, len) {
        (0, 8) => (Some(value as u32), Some((value >> 32) as u32)),
        (0, _) => (Some(value as u32), None),
        _ => (None, Some(value as u32)),
    }
}

impl PciDevice for VirtioPciDevice {
    fn config_read(&mut self, reg: usize) -> u32 {
        self.config.read_reg(reg)
    }

    fn config_write(&mut self, reg: usize, offset: usize, data: &[u8]) {
        let old_bar = self.config.bar_address(0, BarKind::Mem32);
        self.config.write(reg, offset, data);
        // MSI-X message control lives in the upper half of the capability's first dword.
        if reg == self.msix_cap / 4 {
            let mut ctl = [0u8; 2];
            self.config.read_bytes(self.msix_cap + 2, &mut ctl);
            self.vectors.msix.set_control(u16::from_le_bytes(ctl));
        }
        let new_bar = self.config.bar_address(0, BarKind::Mem32);
        if reg == 4
            && new_bar != old_bar
            && new_bar != !(BAR_SIZE - 1) & 0xffff_fff0
            && new_bar != self.bar
        {
            log::warn!(
                "{}: guest moved BAR0 from {:#x} to {new_bar:#x}; relocation is not supported",
                self.name,
                self.bar
            );
        }
    }
}

impl BusDevice for VirtioPciDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            o if o < COMMON_OFFSET + COMMON_SIZE => {
                if matches!(data.len(), 1 | 2 | 4 | 8) {
                    self.common_read(o, data)
                } else {
                    data.fill(0)
                }
            }
            ISR_OFFSET => {
                data.fill(0);
                if let Some(b) = data.first_mut() {
                    *b = self.vectors.isr.swap(0, Ordering::SeqCst);
                }
            }
            o if (DEVICE_CFG_OFFSET..DEVICE_CFG_OFFSET + DEVICE_CFG_SIZE).contains(&o) => {
                self.device.read_config(o - DEVICE_CFG_OFFSET, data)
            }
            o if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&o) => {
                self.vectors.msix.table_read(o - MSIX_TABLE_OFFSET, data)
            }
            o if (MSIX_PBA_OFFSET..BAR_SIZE).contains(&o) => {
                self.vectors.msix.pba_read(o - MSIX_PBA_OFFSET, data)
            }
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            o if o < COMMON_OFFSET + COMMON_SIZE => {
                if matches!(data.len(), 1 | 2 | 4 | 8) {
                    self.common_write(o, data)
                }
            }
            o if (DEVICE_CFG_OFFSET..DEVICE_CFG_OFFSET + DEVICE_CFG_SIZE).contains(&o) => {
                self.device.write_config(o - DEVICE_CFG_OFFSET, data)
            }
            o if (NOTIFY_OFFSET..MSIX_TABLE_OFFSET).contains(&o) => {
                // Normally caught by the ioeventfd; a write of another width lands here.
                let q = ((o - NOTIFY_OFFSET) / u64::from(NOTIFY_MULTIPLIER)) as usize;
                if let Some(Some(k)) = self.kicks.get(q) {
                    let _ = k.write(1);
                } else if self.active {
                    log::debug!(
                        "{}: notify for queue {q} while active (no eventfd here)",
                        self.name
                    );
                }
            }
            o if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&o) => {
                self.vectors.msix.table_write(o - MSIX_TABLE_OFFSET, data)
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::msix::tests::TestRouter;
    use std::sync::Mutex;
    use vm_memory::GuestAddress;

    /// A device that records activation.
    struct Probe {
        sizes: Vec<u16>,
        activated: Arc<Mutex<Option<(usize, u64)>>>,
        kicks: Option<Vec<EventFd>>,
    }

    impl VirtioDevice for Probe {
        fn device_type(&self) -> u32 {
            4
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &self.sizes
        }
        fn features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | super::super::VIRTIO_RING_F_EVENT_IDX
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            super::super::read_config_bytes(&[1, 2, 3, 4], offset, data)
        }
        fn activate(&mut self, ctx: ActivateContext) -> Result<(), super::super::ActivateError> {
            *self.activated.lock().unwrap() = Some((ctx.queues.len(), ctx.acked_features));
            self.kicks = Some(ctx.queues.into_iter().map(|q| q.kick).collect());
            Ok(())
        }
        fn reset(&mut self) -> Option<Vec<EventFd>> {
            self.kicks.take()
        }
    }

    fn w(dev: &mut VirtioPciDevice, off: u64, v: u64, len: usize) {
        dev.write(off, &v.to_le_bytes()[..len]);
    }
    fn r(dev: &mut VirtioPciDevice, off: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        dev.read(off, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    /// (queues, acked features) seen at activation.
    type Activation = Arc<Mutex<Option<(usize, u64)>>>;

    fn make() -> (VirtioPciDevice, Activation) {
        let mem = Arc::new(GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap());
        let activated = Arc::new(Mutex::new(None));
        let probe = Probe {
            sizes: vec![16],
            activated: activated.clone(),
            kicks: None,
        };
        let dev = VirtioPciDevice::new(
            "probe",
            Box::new(probe),
            mem,
            Arc::new(TestRouter::default()),
            0xc000_0000,
        )
        .unwrap();
        (dev, activated)
    }

    #[test]
    fn driver_handshake_activates_and_reset_recovers_eventfds() {
        let (mut dev, activated) = make();
        assert_eq!(dev.config_read(0), 0x1044_1af4);
        assert_eq!(r(&mut dev, 0x12, 2), 1, "num_queues");
        w(&mut dev, 0x14, 1 | 2, 1);
        w(&mut dev, 0x00, 1, 4);
        assert_eq!(r(&mut dev, 0x04, 4), 1, "VERSION_1 in the high word");
        // Driver accepts VERSION_1 and EVENT_IDX plus an unoffered bit.
        w(&mut dev, 0x08, 0, 4);
        w(&mut dev, 0x0c, (1 << 29) | (1 << 5), 4);
        w(&mut dev, 0x08, 1, 4);
        w(&mut dev, 0x0c, 1, 4);
        w(&mut dev, 0x14, 1 | 2 | 8, 1);
        assert_eq!(r(&mut dev, 0x14, 1), 1 | 2 | 8, "FEATURES_OK accepted");
        w(&mut dev, 0x16, 0, 2);
        assert_eq!(r(&mut dev, 0x18, 2), 16);
        w(&mut dev, 0x18, 3, 2); // not a power of two: ignored
        assert_eq!(r(&mut dev, 0x18, 2), 16);
        w(&mut dev, 0x18, 8, 2);
        w(&mut dev, 0x20, 0x1000, 8);
        w(&mut dev, 0x28, 0x2000, 4);
        w(&mut dev, 0x2c, 0, 4);
        w(&mut dev, 0x30, 0x3000, 8);
        w(&mut dev, 0x1a, 0, 2);
        assert_eq!(r(&mut dev, 0x1a, 2), 0);
        w(&mut dev, 0x1a, 999, 2); // out-of-range vector reads back as NO_VECTOR
        assert_eq!(r(&mut dev, 0x1a, 2), 0xffff);
        w(&mut dev, 0x1c, 1, 2);
        assert_eq!(r(&mut dev, 0x20, 8), 0x1000);
        assert_eq!(dev.notify_eventfds().len(), 1);
        w(&mut dev, 0x14, 1 | 2 | 8 | 4, 1);
        assert_eq!(*activated.lock().unwrap(), Some((1, (1 << 32) | (1 << 29))));
        assert!(
            dev.notify_eventfds().is_empty(),
            "kick handed to the device"
        );
        // Queue setup is frozen while running.
        w(&mut dev, 0x20, 0x9000, 8);
        assert_eq!(r(&mut dev, 0x20, 8), 0x1000);
        w(&mut dev, 0x14, 0, 1);
        assert_eq!(r(&mut dev, 0x14, 1), 0);
        assert_eq!(dev.notify_eventfds().len(), 1, "kick returned at reset");
        assert_eq!(r(&mut dev, 0x1c, 2), 0);
    }

    #[test]
    fn invalid_queue_sets_needs_reset_instead_of_activating() {
        let (mut dev, activated) = make();
        w(&mut dev, 0x08, 1, 4);
        w(&mut dev, 0x0c, 1, 4);
        w(&mut dev, 0x14, 1 | 2 | 8, 1);
        w(&mut dev, 0x16, 0, 2);
        w(&mut dev, 0x20, 0xffff_ffff_0000, 8); // outside guest memory
        w(&mut dev, 0x1c, 1, 2);
        w(&mut dev, 0x14, 1 | 2 | 8 | 4, 1);
        assert!(activated.lock().unwrap().is_none());
        assert_ne!(r(&mut dev, 0x14, 1) as u8 & STATUS_NEEDS_RESET, 0);
    }

    #[test]
    fn features_ok_requires_version_1_and_device_config_is_visible() {
        let (mut dev, _) = make();
        w(&mut dev, 0x14, 1 | 2 | 8, 1);
        assert_eq!(r(&mut dev, 0x14, 1), 1 | 2);
        assert_eq!(r(&mut dev, DEVICE_CFG_OFFSET + 1, 2), 0x0302);
        // Odd widths and unknown offsets read zero and do not panic.
        let mut three = [9u8; 3];
        dev.read(0x00, &mut three);
        assert_eq!(three, [0; 3]);
        dev.write(0x7ff8, &[1, 2]);
        dev.write(NOTIFY_OFFSET + 4 * 200, &[0, 0]);
    }
}
