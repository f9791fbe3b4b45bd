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
//! A device with shared memory regions gets a second BAR: BAR 2, 64-bit and
//! prefetchable, placed by the VMM, holding every region (see
//! [`super::shm::ShmLayout`]) with one `virtio_pci_cap64` of type
//! `VIRTIO_PCI_CAP_SHARED_MEMORY_CFG` per region. The VMM maps host memory
//! into it while the device runs; what is not mapped reads as zeros and
//! ignores writes ([`SharedMemoryBar`]).
//!
//! Writing DRIVER_OK activates the device with the queues the driver
//! enabled; writing 0 to the status resets it and takes the queues back.

use std::sync::atomic::{AtomicU16, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::shm::{DeviceShm, ShmLayout, ShmLayoutError, ShmMapper};
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
const VIRTIO_PCI_CAP_SHARED_MEMORY_CFG: u8 = 8;
/// The BAR (registers 6 and 7) holding the shared memory regions.
pub const SHM_BAR_INDEX: usize = 2;
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
    /// Guest accesses to parts of the shared-memory BAR nothing is mapped at.
    pub shm_unmapped_accesses: AtomicU64,
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
    shm: Option<ShmState>,
}

/// The shared-memory BAR of a device that declared regions.
struct ShmState {
    addr: u64,
    layout: ShmLayout,
    backend: Arc<dyn ShmMapper>,
    /// The mapper handed to the device at its last activation.
    active: Option<Arc<DeviceShm>>,
}

/// Where the VMM put a device's shared-memory BAR, and how it maps host
/// memory there (guest address = `addr` + region offset in the BAR + offset).
pub struct ShmBar {
    /// Guest physical address of BAR 2, aligned to its size.
    pub addr: u64,
    /// The VMM's mapper for this device; it sees only requests the transport
    /// checked against the layout.
    pub mapper: Arc<dyn ShmMapper>,
}

/// What the VMM answers when asked to place a shared-memory BAR.
pub type ShmPlacement = Result<ShmBar, Box<dyn std::error::Error + Send + Sync>>;

/// Errors creating the transport.
#[derive(Debug, thiserror::Error)]
pub enum VirtioPciError {
    #[error("device has {0} queues; at most {MAX_QUEUES} are supported")]
    TooManyQueues(usize),
    #[error("cannot create the device's interrupt lines or eventfds")]
    Io(#[from] std::io::Error),
    #[error("invalid queue size {0} (must be a power of two, 1..=32768)")]
    QueueSize(u16),
    #[error("invalid shared memory regions")]
    SharedMemory(#[from] ShmLayoutError),
    #[error("the device has shared memory regions but no BAR was placed for them")]
    SharedMemoryNotPlaced,
    #[error("cannot place the shared memory BAR")]
    SharedMemoryPlacement(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("shared memory BAR at {addr:#x} is not aligned to its size {size:#x}")]
    SharedMemoryMisaligned { addr: u64, size: u64 },
}

fn vendor_cap(cfg_type: u8, offset: u64, length: u64, extra: &[u8]) -> Vec<u8> {
    // cap_len, cfg_type, bar, id, padding[2], offset, length (+ extra)
    let mut body = vec![(16 + extra.len()) as u8, cfg_type, 0, 0, 0, 0];
    body.extend_from_slice(&(offset as u32).to_le_bytes());
    body.extend_from_slice(&(length as u32).to_le_bytes());
    body.extend_from_slice(extra);
    body
}

/// A `virtio_pci_cap64` (cap_len 24) for shared memory region `id`.
fn shm_cap(id: u8, offset: u64, length: u64) -> Vec<u8> {
    let mut body = vendor_cap(
        VIRTIO_PCI_CAP_SHARED_MEMORY_CFG,
        offset,
        length,
        &[
            ((offset >> 32) as u32).to_le_bytes(),
            ((length >> 32) as u32).to_le_bytes(),
        ]
        .concat(),
    );
    body[2] = SHM_BAR_INDEX as u8;
    body[3] = id;
    body
}

impl VirtioPciDevice {
    /// Wraps `device` with its BAR at `bar` (BAR_SIZE bytes, aligned). A
    /// device with shared memory regions needs
    /// [`VirtioPciDevice::with_shared_memory`].
    pub fn new(
        name: &str,
        device: Box<dyn VirtioDevice>,
        mem: Arc<GuestMemory>,
        router: Arc<dyn MsiRouter>,
        bar: u64,
    ) -> Result<Self, VirtioPciError> {
        Self::with_shared_memory(name, device, mem, router, bar, |_| {
            Err(VirtioPciError::SharedMemoryNotPlaced.into())
        })
    }

    /// Like [`VirtioPciDevice::new`]; when the device declares shared memory
    /// regions, `place` gets their layout and returns where the VMM put the
    /// BAR (aligned to [`ShmLayout::bar_size`]) and the mapper behind it.
    /// `place` is not called for a device without regions.
    pub fn with_shared_memory(
        name: &str,
        device: Box<dyn VirtioDevice>,
        mem: Arc<GuestMemory>,
        router: Arc<dyn MsiRouter>,
        bar: u64,
        place: impl FnOnce(&ShmLayout) -> ShmPlacement,
    ) -> Result<Self, VirtioPciError> {
        let layout = ShmLayout::new(&device.shared_memory_regions())?;
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
        let shm = match layout {
            None => None,
            Some(layout) => {
                let placed = place(&layout).map_err(|e| match e.downcast::<VirtioPciError>() {
                    Ok(e) => *e,
                    Err(e) => VirtioPciError::SharedMemoryPlacement(e),
                })?;
                let size = layout.bar_size();
                if !placed.addr.is_multiple_of(size) {
                    return Err(VirtioPciError::SharedMemoryMisaligned {
                        addr: placed.addr,
                        size,
                    });
                }
                config.add_bar(SHM_BAR_INDEX, placed.addr, size, BarKind::Mem64Prefetch);
                for r in layout.regions() {
                    config.add_capability(PCI_CAP_ID_VNDR, &shm_cap(r.id, r.offset, r.len), &[]);
                }
                Some(ShmState {
                    addr: placed.addr,
                    layout,
                    backend: placed.mapper,
                    active: None,
                })
            }
        };
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
            shm,
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

    /// The shared-memory BAR, when the device has one: its guest address,
    /// its size, and the bus device that answers accesses to its unmapped
    /// parts (register it on the MMIO bus over the whole BAR).
    pub fn shared_memory_bar(&self) -> Option<(u64, u64, SharedMemoryBar)> {
        self.shm.as_ref().map(|s| {
            (
                s.addr,
                s.layout.bar_size(),
                SharedMemoryBar {
                    metrics: self.metrics.clone(),
                },
            )
        })
    }

    /// Removes every shared memory mapping of the device and closes the
    /// mapper it was given.
    fn close_shared_memory(&mut self) {
        if let Some(active) = self.shm.as_mut().and_then(|s| s.active.take()) {
            active.close();
        }
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
        // Mappings go first: the device may free their host memory as soon
        // as it is reset.
        self.close_shared_memory();
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
                crate::guest_warn!("{}: queue {i} is not valid; device needs reset", self.name);
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
        let shm = self.shm.as_mut().map(|s| {
            let device_shm = Arc::new(DeviceShm::new(s.layout.clone(), s.backend.clone()));
            s.active = Some(device_shm.clone());
            device_shm as Arc<dyn ShmMapper>
        });
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            queues,
            interrupt: self.vectors.clone(),
            acked_features: self.driver_features,
            notifications: self.metrics.notifications.clone(),
            shm,
        };
        match self.device.activate(ctx) {
            Ok(()) => self.active = true,
            Err(e) => {
                log::error!("{}: activation failed: {e}", self.name);
                self.close_shared_memory();
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
        if let Some(shm) = &self.shm {
            self.warn_if_shm_bar_moved(shm.addr, shm.layout.bar_size(), reg);
        }
        let new_bar = self.config.bar_address(0, BarKind::Mem32);
        if reg == 4
            && new_bar != old_bar
            && new_bar != !(BAR_SIZE - 1) & 0xffff_fff0
            && new_bar != self.bar
        {
            crate::guest_warn!(
                "{}: guest moved BAR0 from {:#x} to {new_bar:#x}; relocation is not supported",
                self.name,
                self.bar
            );
        }
    }
}

impl VirtioPciDevice {
    /// Logs a guest moving BAR 2. Sizing writes all ones to one half at a
    /// time and restores it, so a half that reads back as either the
    /// assigned address or the size mask is not a move.
    fn warn_if_shm_bar_moved(&self, addr: u64, size: u64, reg: usize) {
        let lo_reg = 4 + SHM_BAR_INDEX;
        if reg != lo_reg && reg != lo_reg + 1 {
            return;
        }
        let now = self
            .config
            .bar_address(SHM_BAR_INDEX, BarKind::Mem64Prefetch);
        let mask = !(size - 1);
        let half = |v: u64| {
            if reg == lo_reg {
                v & 0xffff_fff0
            } else {
                v >> 32
            }
        };
        if half(now) != half(addr) && half(now) != half(mask) {
            crate::guest_warn!(
                "{}: guest moved BAR{SHM_BAR_INDEX} (shared memory) from {addr:#x} to {now:#x}; \
                 relocation is not supported",
                self.name
            );
        }
    }
}

impl Drop for VirtioPciDevice {
    fn drop(&mut self) {
        // Before the device (and the host memory it mapped) goes away.
        self.close_shared_memory();
    }
}

/// The shared-memory BAR as the MMIO bus sees it: only accesses to parts no
/// mapping covers exit to the VMM (mapped parts are guest memory). They read
/// as zeros and writes are dropped, like a hole in the region.
pub struct SharedMemoryBar {
    metrics: Arc<TransportMetrics>,
}

impl SharedMemoryBar {
    /// A hole counting its accesses in `metrics`.
    pub fn new(metrics: Arc<TransportMetrics>) -> Self {
        Self { metrics }
    }
}

impl BusDevice for SharedMemoryBar {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.metrics
            .shm_unmapped_accesses
            .fetch_add(1, Ordering::Relaxed);
        log::trace!("shared memory BAR: read of unmapped offset {offset:#x}");
        data.fill(0);
    }

    fn write(&mut self, offset: u64, _data: &[u8]) {
        self.metrics
            .shm_unmapped_accesses
            .fetch_add(1, Ordering::Relaxed);
        log::trace!("shared memory BAR: write to unmapped offset {offset:#x} dropped");
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
    use crate::virtio::shm::ShmError;
    use crate::virtio::SharedMemoryRegion;
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

    /// A device with shared memory regions; keeps the mapper it is given.
    struct ShmProbe {
        regions: Vec<SharedMemoryRegion>,
        sizes: Vec<u16>,
        shm: Arc<Mutex<Option<Arc<dyn ShmMapper>>>>,
        kicks: Option<Vec<EventFd>>,
    }

    impl VirtioDevice for ShmProbe {
        fn device_type(&self) -> u32 {
            super::super::device_type::GPU
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &self.sizes
        }
        fn features(&self) -> u64 {
            VIRTIO_F_VERSION_1
        }
        fn read_config(&self, _offset: u64, data: &mut [u8]) {
            data.fill(0)
        }
        fn shared_memory_regions(&self) -> Vec<SharedMemoryRegion> {
            self.regions.clone()
        }
        fn activate(&mut self, ctx: ActivateContext) -> Result<(), super::super::ActivateError> {
            *self.shm.lock().unwrap() = ctx.shm;
            self.kicks = Some(ctx.queues.into_iter().map(|q| q.kick).collect());
            Ok(())
        }
        fn reset(&mut self) -> Option<Vec<EventFd>> {
            self.kicks.take()
        }
    }

    /// What the fake VMM mapper was asked: (map?, region, offset, len, writable).
    type MapperLog = Arc<Mutex<Vec<(bool, u8, u64, u64, bool)>>>;

    /// Records requests and accepts them all: it trusts the transport's
    /// checks, which is what the tests look at.
    #[derive(Default)]
    struct FakeMapper(MapperLog);

    impl ShmMapper for FakeMapper {
        unsafe fn map(
            &self,
            region: u8,
            offset: u64,
            _host_addr: *mut u8,
            len: u64,
            writable: bool,
        ) -> Result<(), ShmError> {
            self.0
                .lock()
                .unwrap()
                .push((true, region, offset, len, writable));
            Ok(())
        }
        fn unmap(&self, region: u8, offset: u64) -> Result<(), ShmError> {
            self.0
                .lock()
                .unwrap()
                .push((false, region, offset, 0, false));
            Ok(())
        }
    }

    const SHM_BAR_ADDR: u64 = 0x40_0000_0000;

    struct ShmFixture {
        dev: VirtioPciDevice,
        shm: Arc<Mutex<Option<Arc<dyn ShmMapper>>>>,
        log: MapperLog,
    }

    fn make_shm(regions: Vec<SharedMemoryRegion>) -> Result<ShmFixture, VirtioPciError> {
        let mem = Arc::new(GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap());
        let shm = Arc::new(Mutex::new(None));
        let log = MapperLog::default();
        let probe = ShmProbe {
            regions,
            sizes: vec![16],
            shm: shm.clone(),
            kicks: None,
        };
        let mapper = Arc::new(FakeMapper(log.clone()));
        let dev = VirtioPciDevice::with_shared_memory(
            "shm-probe",
            Box::new(probe),
            mem,
            Arc::new(TestRouter::default()),
            0xc000_0000,
            |layout| {
                assert!(layout.bar_size().is_power_of_two());
                Ok(ShmBar {
                    addr: SHM_BAR_ADDR,
                    mapper,
                })
            },
        )?;
        Ok(ShmFixture { dev, shm, log })
    }

    fn drive_to_driver_ok(dev: &mut VirtioPciDevice) {
        w(dev, 0x14, 1 | 2, 1);
        w(dev, 0x08, 1, 4);
        w(dev, 0x0c, 1, 4);
        w(dev, 0x14, 1 | 2 | 8, 1);
        w(dev, 0x16, 0, 2);
        w(dev, 0x20, 0x1000, 8);
        w(dev, 0x28, 0x2000, 8);
        w(dev, 0x30, 0x3000, 8);
        w(dev, 0x1c, 1, 2);
        w(dev, 0x14, 1 | 2 | 8 | 4, 1);
    }

    fn cfg_byte(dev: &mut VirtioPciDevice, off: usize) -> u8 {
        (dev.config_read(off / 4) >> ((off % 4) * 8)) as u8
    }

    fn cfg_u32(dev: &mut VirtioPciDevice, off: usize) -> u32 {
        (0..4).fold(0, |v, i| v | (u32::from(cfg_byte(dev, off + i)) << (8 * i)))
    }

    /// Every vendor capability as (cfg_type, cap_len, bar, id, offset, length),
    /// 64-bit fields read from `offset_hi`/`length_hi` where cap_len says so.
    fn vendor_caps(dev: &mut VirtioPciDevice) -> Vec<(u8, u8, u8, u8, u64, u64)> {
        assert_ne!(dev.config_read(1) & (1 << 20), 0, "capability list");
        let mut out = Vec::new();
        let mut pos = usize::from(cfg_byte(dev, 0x34));
        let mut seen = 0;
        while pos != 0 {
            seen += 1;
            assert!(seen < 48 && (0x40..0x100).contains(&pos), "sane list");
            if cfg_byte(dev, pos) == PCI_CAP_ID_VNDR {
                let cap_len = cfg_byte(dev, pos + 2);
                let mut offset = u64::from(cfg_u32(dev, pos + 8));
                let mut length = u64::from(cfg_u32(dev, pos + 12));
                if cap_len == 24 {
                    offset |= u64::from(cfg_u32(dev, pos + 16)) << 32;
                    length |= u64::from(cfg_u32(dev, pos + 20)) << 32;
                }
                out.push((
                    cfg_byte(dev, pos + 3),
                    cap_len,
                    cfg_byte(dev, pos + 4),
                    cfg_byte(dev, pos + 5),
                    offset,
                    length,
                ));
            }
            pos = usize::from(cfg_byte(dev, pos + 1));
        }
        out
    }

    fn region(id: u8, len: u64) -> SharedMemoryRegion {
        SharedMemoryRegion { id, len }
    }

    #[test]
    fn shared_memory_capabilities_parse_back_from_config_space() {
        // 8 GiB + 4 KiB: the small region sits at 8 GiB, the BAR is 16 GiB.
        let mut f = make_shm(vec![region(1, 4096), region(0, 8 << 30)]).unwrap();
        let caps = vendor_caps(&mut f.dev);
        let shm: Vec<_> = caps.iter().filter(|c| c.0 == 8).copied().collect();
        assert_eq!(
            shm,
            vec![(8, 24, 2, 0, 0, 8 << 30), (8, 24, 2, 1, 8 << 30, 4096)],
            "cfg_type 8, cap_len 24, BAR 2, id, 64-bit offset and length"
        );
        // The transport's own structures stay in BAR 0.
        assert!(caps
            .iter()
            .filter(|c| c.0 != 8)
            .all(|c| c.2 == 0 && c.1 >= 16));
        assert_eq!(caps.len(), 4 + 2);
        let (addr, size, _) = f.dev.shared_memory_bar().unwrap();
        assert_eq!((addr, size), (SHM_BAR_ADDR, 16 << 30));
        // BAR 2 is a 64-bit prefetchable memory BAR at the assigned address.
        assert_eq!(f.dev.config_read(6) & 0xf, 0b1100);
        assert_eq!(
            u64::from(f.dev.config_read(6) & !0xf) | (u64::from(f.dev.config_read(7)) << 32),
            SHM_BAR_ADDR
        );
        // A device without regions has neither the BAR nor the capabilities.
        let (mut plain, _) = make();
        assert!(plain.shared_memory_bar().is_none());
        assert!(vendor_caps(&mut plain).iter().all(|c| c.0 != 8));
        assert_eq!(plain.config_read(6), 0);
    }

    #[test]
    fn the_most_regions_fit_the_configuration_space() {
        let regions: Vec<_> = (0..crate::virtio::shm::MAX_SHM_REGIONS as u8)
            .map(|i| region(10 + i, 4096 << i))
            .collect();
        let mut f = make_shm(regions).unwrap();
        let ids: Vec<_> = vendor_caps(&mut f.dev)
            .iter()
            .filter(|c| c.0 == 8)
            .map(|c| c.3)
            .collect();
        assert_eq!(ids, vec![13, 12, 11, 10]);
    }

    #[test]
    fn shared_memory_bar_sizing_probe() {
        let mut f = make_shm(vec![region(1, 1 << 30)]).unwrap();
        let dev = &mut f.dev;
        // Linux: all ones into the low half, read, restore; then the high half.
        let lo = dev.config_read(6);
        dev.config_write(6, 0, &[0xff; 4]);
        assert_eq!(
            dev.config_read(6),
            0xc000_0000 | 0b1100,
            "1 GiB, 64-bit, prefetchable"
        );
        dev.config_write(6, 0, &lo.to_le_bytes());
        let hi = dev.config_read(7);
        dev.config_write(7, 0, &[0xff; 4]);
        assert_eq!(dev.config_read(7), 0xffff_ffff);
        dev.config_write(7, 0, &hi.to_le_bytes());
        assert_eq!(
            u64::from(dev.config_read(6) & !0xf) | (u64::from(dev.config_read(7)) << 32),
            SHM_BAR_ADDR
        );
        // Above 4 GiB the size shows in the high half.
        let mut big = make_shm(vec![region(1, 16 << 30)]).unwrap();
        big.dev.config_write(6, 0, &[0xff; 4]);
        big.dev.config_write(7, 0, &[0xff; 4]);
        assert_eq!(big.dev.config_read(6), 0b1100);
        assert_eq!(big.dev.config_read(7), 0xffff_fffc);
        // A real move is logged, not followed, and does not panic.
        big.dev.config_write(7, 0, &0x80u32.to_le_bytes());
        big.dev.config_write(6, 0, &0u32.to_le_bytes());
        assert_eq!(big.dev.shared_memory_bar().unwrap().0, SHM_BAR_ADDR);
    }

    #[test]
    fn unmapped_shared_memory_reads_zero_and_ignores_writes() {
        let f = make_shm(vec![region(1, 1 << 20)]).unwrap();
        let (addr, size, hole) = f.dev.shared_memory_bar().unwrap();
        let bus = crate::bus::Bus::new();
        bus.insert(Arc::new(Mutex::new(hole)), addr, size).unwrap();
        for (off, len) in [
            (0u64, 1usize),
            (0x1000, 4),
            (0x7_fff8, 8),
            (size - 1, 1),
            (size - 8, 8),
        ] {
            let mut buf = vec![0xaa; len];
            assert!(bus.read(addr + off, &mut buf), "{off:#x} routed");
            assert!(buf.iter().all(|&b| b == 0), "{off:#x} reads zero");
            assert!(bus.write(addr + off, &buf), "{off:#x} routed");
        }
        let mut past = [0u8; 2];
        assert!(!bus.read(addr + size - 1, &mut past), "not past the BAR");
        assert_eq!(
            f.dev
                .transport_metrics()
                .shm_unmapped_accesses
                .load(Ordering::Relaxed),
            10
        );
    }

    #[test]
    fn shared_memory_mapper_checks_requests_and_reset_removes_every_mapping() {
        let mut f = make_shm(vec![region(1, 1 << 20), region(2, 0x4000)]).unwrap();
        assert!(f.shm.lock().unwrap().is_none());
        drive_to_driver_ok(&mut f.dev);
        let shm = f
            .shm
            .lock()
            .unwrap()
            .clone()
            .expect("a mapper at activation");
        let mut page = vec![0u8; 0x10000];
        let host = page.as_mut_ptr();
        // SAFETY: the fake mapper never touches the host memory.
        let map = |r: u8, off: u64, len: u64| unsafe { shm.map(r, off, host, len, true) };
        assert!(matches!(map(3, 0, 0x1000), Err(ShmError::UnknownRegion(3))));
        assert!(matches!(
            map(1, 0x800, 0x1000),
            Err(ShmError::Unaligned { .. })
        ));
        assert!(matches!(map(1, 0, 0x1800), Err(ShmError::Unaligned { .. })));
        assert!(matches!(map(1, 0, 0), Err(ShmError::Empty { .. })));
        assert!(matches!(
            map(1, 0xff000, 0x2000),
            Err(ShmError::OutOfBounds { .. })
        ));
        assert!(matches!(
            map(2, 0, 0x5000),
            Err(ShmError::OutOfBounds { .. })
        ));
        assert!(matches!(
            map(1, u64::MAX - 0xfff, 0x2000),
            Err(ShmError::OutOfBounds { .. })
        ));
        assert!(f.log.lock().unwrap().is_empty(), "nothing reached the VMM");
        map(1, 0x2000, 0x2000).unwrap();
        map(2, 0x2000, 0x1000).unwrap();
        assert!(matches!(
            map(1, 0x3000, 0x1000),
            Err(ShmError::Overlap { .. })
        ));
        assert!(matches!(
            map(1, 0x1000, 0x2000),
            Err(ShmError::Overlap { .. })
        ));
        // SAFETY: as above.
        unsafe { shm.map(1, 0x4000, host, 0x1000, false) }.unwrap();
        assert!(matches!(
            shm.unmap(1, 0x3000),
            Err(ShmError::NotMapped { .. })
        ));
        shm.unmap(1, 0x4000).unwrap();
        assert_eq!(
            *f.log.lock().unwrap(),
            vec![
                (true, 1, 0x2000, 0x2000, true),
                (true, 2, 0x2000, 0x1000, true),
                (true, 1, 0x4000, 0x1000, false),
                (false, 1, 0x4000, 0, false),
            ]
        );
        f.log.lock().unwrap().clear();
        // The driver resets the device: everything still mapped goes.
        w(&mut f.dev, 0x14, 0, 1);
        let mut unmapped = f.log.lock().unwrap().clone();
        unmapped.sort();
        assert_eq!(
            unmapped,
            vec![(false, 1, 0x2000, 0, false), (false, 2, 0x2000, 0, false)]
        );
        // The old mapper is closed: maps fail, unmaps are no-ops.
        assert!(matches!(map(1, 0x8000, 0x1000), Err(ShmError::Closed)));
        shm.unmap(1, 0x2000).unwrap();
        assert_eq!(f.log.lock().unwrap().len(), 2);
        // A new activation brings a new, open mapper.
        drive_to_driver_ok(&mut f.dev);
        let again = f.shm.lock().unwrap().clone().unwrap();
        // SAFETY: as above.
        unsafe { again.map(1, 0x2000, host, 0x1000, true) }.unwrap();
        // Dropping the transport unmaps before the device goes.
        f.log.lock().unwrap().clear();
        drop(f.dev);
        assert_eq!(*f.log.lock().unwrap(), vec![(false, 1, 0x2000, 0, false)]);
        page[0] = 1;
    }

    #[test]
    fn mappings_per_device_are_limited() {
        let mut f = make_shm(vec![region(1, 8 << 20)]).unwrap();
        drive_to_driver_ok(&mut f.dev);
        let shm = f.shm.lock().unwrap().clone().unwrap();
        let limit = crate::virtio::shm::MAX_SHM_MAPPINGS as u64;
        for i in 0..limit {
            // SAFETY: the fake mapper never touches the host memory.
            unsafe { shm.map(1, i * 0x1000, std::ptr::null_mut(), 0x1000, true) }.unwrap();
        }
        // SAFETY: as above.
        let over = unsafe { shm.map(1, limit * 0x1000, std::ptr::null_mut(), 0x1000, true) };
        assert!(matches!(over, Err(ShmError::TooManyMappings(_))));
        shm.unmap(1, 0).unwrap();
        // SAFETY: as above.
        unsafe { shm.map(1, limit * 0x1000, std::ptr::null_mut(), 0x1000, true) }.unwrap();
    }

    #[test]
    fn shared_memory_declarations_are_checked_at_creation() {
        for bad in [0, 2048, 0x3000, (1 << 20) + 0x1000] {
            let err = make_shm(vec![region(4, bad)]).err().expect("rejected");
            assert!(
                matches!(
                    err,
                    VirtioPciError::SharedMemory(ShmLayoutError::BadLength { id: 4, .. })
                ),
                "{bad:#x}: {err}"
            );
        }
        assert!(matches!(
            make_shm(vec![region(1, 4096), region(1, 8192)]).err(),
            Some(VirtioPciError::SharedMemory(ShmLayoutError::DuplicateId(1)))
        ));
        // A device with regions needs a placed BAR, aligned to its size.
        let mem = Arc::new(GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap());
        let probe = || {
            Box::new(ShmProbe {
                regions: vec![region(1, 1 << 20)],
                sizes: vec![16],
                shm: Arc::default(),
                kicks: None,
            })
        };
        let router = Arc::new(TestRouter::default());
        let err = VirtioPciDevice::new("p", probe(), mem.clone(), router.clone(), 0xc000_0000)
            .err()
            .unwrap();
        assert!(
            matches!(err, VirtioPciError::SharedMemoryNotPlaced),
            "{err}"
        );
        let err = VirtioPciDevice::with_shared_memory(
            "p",
            probe(),
            mem.clone(),
            router.clone(),
            0xc000_0000,
            |_| {
                Ok(ShmBar {
                    addr: SHM_BAR_ADDR + 0x1000,
                    mapper: Arc::new(FakeMapper::default()),
                })
            },
        )
        .err()
        .unwrap();
        assert!(
            matches!(err, VirtioPciError::SharedMemoryMisaligned { .. }),
            "{err}"
        );
        let err =
            VirtioPciDevice::with_shared_memory("p", probe(), mem, router, 0xc000_0000, |_| {
                Err("window full".into())
            })
            .err()
            .unwrap();
        assert!(
            matches!(err, VirtioPciError::SharedMemoryPlacement(_)),
            "{err}"
        );
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
