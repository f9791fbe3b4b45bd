//! Virtio devices and their PCI transport.
//!
//! A device implements [`VirtioDevice`]: it states its type, features, queue
//! sizes and configuration space, and at [`VirtioDevice::activate`] receives
//! guest memory, its ready queues with their notification eventfds, and an
//! [`Interrupt`] to signal the driver. It then moves its runtime state into a
//! worker thread (see [`worker`]) which gives it back at [`VirtioDevice::reset`].
//! Queue processing in each device is a plain function over a `Queue` and
//! guest memory, so it is unit-tested with virtio-queue's driver mock.
//!
//! A device that shows host memory to the guest declares shared memory
//! regions ([`VirtioDevice::shared_memory_regions`]) and, while active, maps
//! into them through [`ActivateContext::shm`] (see [`shm`]).

pub mod block;
pub mod input;
pub mod pci;
#[cfg(test)]
mod pci_adversarial;
pub mod rng;
pub mod shm;
pub mod worker;

use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::GuestMemory;

pub use shm::{SharedMemoryRegion, ShmError, ShmMapper};

/// Feature bit: the device complies with virtio 1.0+ (mandatory for modern PCI).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Feature bit: the device may access memory through the platform IOMMU.
pub const VIRTIO_F_ACCESS_PLATFORM: u64 = 1 << 33;
/// Feature bit: event-index notification suppression.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// Feature bit: indirect descriptors.
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;

/// Virtio device type ids (virtio 1.3 §5).
pub mod device_type {
    pub const BLOCK: u32 = 2;
    pub const RNG: u32 = 4;
    pub const GPU: u32 = 16;
    pub const INPUT: u32 = 18;
}

/// What a device signals to its driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptKind {
    /// The used ring of queue `n` has new entries.
    Queue(u16),
    /// The device configuration changed.
    Config,
}

/// Sends interrupts to the driver (MSI-X vectors on PCI).
pub trait Interrupt: Send + Sync {
    fn trigger(&self, kind: InterruptKind);
}

/// A queue handed to a device at activation.
pub struct ActiveQueue {
    /// The queue, configured and ready.
    pub queue: Queue,
    /// Signalled when the driver notifies the queue.
    pub kick: EventFd,
}

/// Everything a device needs to run.
pub struct ActivateContext {
    pub mem: Arc<GuestMemory>,
    pub queues: Vec<ActiveQueue>,
    pub interrupt: Arc<dyn Interrupt>,
    /// Features the driver accepted (a subset of [`VirtioDevice::features`]).
    pub acked_features: u64,
    /// Counts driver notifications (kicks) as the worker consumes them.
    pub notifications: Arc<std::sync::atomic::AtomicU64>,
    /// Maps host memory into the device's shared memory regions: `Some`
    /// when the device declared regions
    /// ([`VirtioDevice::shared_memory_regions`]). Valid until the device is
    /// reset; every mapping is removed before [`VirtioDevice::reset`] is
    /// called.
    pub shm: Option<Arc<dyn ShmMapper>>,
}

impl ActivateContext {
    /// Checks that the driver set up `expected` queues and turns on event-index
    /// suppression in each if the driver accepted it. Every device calls this
    /// first in [`VirtioDevice::activate`].
    pub fn prepare_queues(&mut self, expected: usize) -> Result<(), ActivateError> {
        if self.queues.len() != expected {
            return Err(ActivateError::QueueCount {
                expected,
                got: self.queues.len(),
            });
        }
        let event_idx = self.acked_features & VIRTIO_RING_F_EVENT_IDX != 0;
        for q in &mut self.queues {
            virtio_queue::QueueT::set_event_idx(&mut q.queue, event_idx);
        }
        Ok(())
    }
}

/// Errors a device can report at activation.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("expected {expected} queues, driver set up {got}")]
    QueueCount { expected: usize, got: usize },
    #[error("could not start the device worker")]
    Worker(#[source] std::io::Error),
    #[error("device is already active")]
    AlreadyActive,
}

/// A virtio device, independent of its transport.
pub trait VirtioDevice: Send {
    /// The virtio device type (see [`device_type`]).
    fn device_type(&self) -> u32;
    /// The maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// The device feature bits it offers.
    fn features(&self) -> u64;
    /// Reads the device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration space (ignored by default).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts the device with the driver's queues.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// The shared memory regions the device exposes (virtio 1.3 §2.10), asked
    /// once when the transport is created. Each length must be a power of two
    /// of at least 4 KiB and each id unique, or the transport refuses the
    /// device. None by default.
    fn shared_memory_regions(&self) -> Vec<SharedMemoryRegion> {
        Vec::new()
    }
    /// The device's own counters, as JSON (None: it keeps none).
    fn metrics(&self) -> Option<serde_json::Value> {
        None
    }
    /// Stops the device, returning the kick eventfds so the transport can reuse
    /// them (they stay registered with the hypervisor). Returns `None` when the
    /// device was not active.
    fn reset(&mut self) -> Option<Vec<EventFd>>;
}

/// Reads `data.len()` bytes at `offset` from a byte image of a config space,
/// zero-filling whatever lies outside it.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= config.len() {
        return;
    }
    let end = config.len().min(start + data.len());
    data[..end - start].copy_from_slice(&config[start..end]);
}
