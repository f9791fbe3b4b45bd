//! virtio-rng: entropy for the guest (virtio 1.3 §5.4).
//!
//! The device fills every device-writable buffer of a chain straight from the
//! host's `/dev/urandom` (opened once, at creation) into guest memory, up to
//! [`MAX_BYTES_PER_CHAIN`] per chain so the guest cannot make one request
//! arbitrarily expensive. Device-readable buffers are skipped. The used
//! length is the number of bytes written.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::Queue;
use vm_memory::{GuestMemoryBackend, ReadVolatile};
use vmm_sys_util::eventfd::EventFd;

use super::worker::{drain_queue, QueueHandler, Worker};
use super::{
    device_type, ActivateContext, ActivateError, VirtioDevice, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use crate::GuestMemory;

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// The most bytes written into one chain.
pub const MAX_BYTES_PER_CHAIN: u32 = 64 << 10;
/// Where the entropy comes from.
pub const RANDOM_SOURCE: &str = "/dev/urandom";

const THREAD_NAME: &str = "virtio-rng";

/// Errors creating the device.
#[derive(Debug, thiserror::Error)]
pub enum RngError {
    #[error("cannot open random source '{}'", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Live counters of the device.
#[derive(Debug, Default)]
pub struct RngMetrics {
    /// Random bytes handed to the guest.
    pub bytes: AtomicU64,
    /// Chains served.
    pub requests: AtomicU64,
}

/// A point-in-time copy of [`RngMetrics`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RngMetricsSnapshot {
    pub bytes: u64,
    pub requests: u64,
}

impl RngMetrics {
    /// Reads every counter.
    pub fn snapshot(&self) -> RngMetricsSnapshot {
        RngMetricsSnapshot {
            bytes: self.bytes.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
        }
    }
}

/// The virtio-rng device.
pub struct Rng {
    source: Arc<File>,
    metrics: Arc<RngMetrics>,
    worker: Option<Worker<RngHandler>>,
}

impl Rng {
    /// Opens [`RANDOM_SOURCE`].
    pub fn new() -> Result<Self, RngError> {
        let path = Path::new(RANDOM_SOURCE);
        let source = File::open(path).map_err(|source| RngError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            source: Arc::new(source),
            metrics: Arc::new(RngMetrics::default()),
            worker: None,
        })
    }

    /// The device's counters, live while it runs.
    pub fn metrics(&self) -> Arc<RngMetrics> {
        self.metrics.clone()
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        device_type::RNG
    }

    fn metrics(&self) -> Option<serde_json::Value> {
        serde_json::to_value(self.metrics.snapshot()).ok()
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | VIRTIO_RING_F_INDIRECT_DESC
    }

    /// virtio-rng has no configuration space.
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(&mut self, mut ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.worker.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        ctx.prepare_queues(1)?;
        let handler = RngHandler::new(self.source.clone(), self.metrics.clone());
        let worker = Worker::spawn(THREAD_NAME, handler, ctx).map_err(ActivateError::Worker)?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) -> Option<Vec<EventFd>> {
        let worker = self.worker.take()?;
        match worker.stop() {
            Some((_, kicks)) => Some(kicks),
            None => {
                log::error!("{THREAD_NAME}: worker thread panicked");
                None
            }
        }
    }
}

/// Serves the queue on the worker thread.
pub struct RngHandler {
    source: Arc<File>,
    metrics: Arc<RngMetrics>,
}

impl RngHandler {
    /// A handler reading from `source` (any readable file).
    pub fn new(source: Arc<File>, metrics: Arc<RngMetrics>) -> Self {
        Self { source, metrics }
    }

    /// Fills the device-writable buffers of one chain; returns the bytes
    /// written. Stops at the cap, at a buffer outside guest memory, or when
    /// the source fails.
    pub fn fill_chain(
        &self,
        descriptors: impl IntoIterator<Item = Descriptor>,
        mem: &GuestMemory,
    ) -> u32 {
        let mut source: &File = &self.source;
        let mut written: u32 = 0;
        'chain: for d in descriptors {
            if written == MAX_BYTES_PER_CHAIN {
                break;
            }
            if !d.is_write_only() {
                continue;
            }
            let len = d.len().min(MAX_BYTES_PER_CHAIN - written);
            for slice in mem.get_slices(d.addr(), len as usize) {
                let mut slice = match slice {
                    Ok(slice) => slice,
                    Err(e) => {
                        log::debug!("virtio-rng: buffer outside guest memory: {e}");
                        break 'chain;
                    }
                };
                if let Err(e) = source.read_exact_volatile(&mut slice) {
                    crate::guest_warn!("virtio-rng: cannot read {RANDOM_SOURCE}: {e}");
                    break 'chain;
                }
                // A slice is at most `len` bytes, so this stays within the cap.
                written += slice.len() as u32;
            }
        }
        self.metrics.requests.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .bytes
            .fetch_add(u64::from(written), Ordering::Relaxed);
        written
    }
}

impl QueueHandler for RngHandler {
    fn process_queue(&mut self, _index: usize, queue: &mut Queue, mem: &GuestMemory) -> bool {
        drain_queue(queue, mem, |chain| self.fill_chain(chain, mem))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    use super::*;
    use crate::virtio::block::request::tests::{mem, run_chain, D, DATA_ADDR, MEM_SIZE};
    use crate::virtio::{ActiveQueue, Interrupt, InterruptKind};

    fn handler() -> RngHandler {
        let rng = Rng::new().unwrap();
        RngHandler::new(rng.source.clone(), rng.metrics())
    }

    fn read(mem: &GuestMemory, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    #[test]
    fn fills_writable_buffers() {
        let h = handler();
        let mem = mem();
        let descs = [D(DATA_ADDR, 100, true), D(DATA_ADDR + 0x1000, 300, true)];
        let len = run_chain(&mem, &descs, |c| h.fill_chain(c, &mem));
        assert_eq!(len, 400);
        assert!(read(&mem, DATA_ADDR, 100).iter().any(|&b| b != 0));
        assert!(read(&mem, DATA_ADDR + 0x1000, 300).iter().any(|&b| b != 0));
        // Nothing past the buffers.
        assert!(read(&mem, DATA_ADDR + 100, 0xf00).iter().all(|&b| b == 0));
        assert!(read(&mem, DATA_ADDR + 0x1000 + 300, 64)
            .iter()
            .all(|&b| b == 0));
        assert_eq!(
            h.metrics.snapshot(),
            RngMetricsSnapshot {
                bytes: 400,
                requests: 1
            }
        );
    }

    #[test]
    fn skips_readable_buffers() {
        let h = handler();
        let mem = mem();
        let len = run_chain(&mem, &[D(DATA_ADDR, 64, false)], |c| h.fill_chain(c, &mem));
        assert_eq!(len, 0);
        assert!(read(&mem, DATA_ADDR, 64).iter().all(|&b| b == 0));

        let descs = [D(DATA_ADDR, 64, false), D(DATA_ADDR + 0x100, 32, true)];
        let len = run_chain(&mem, &descs, |c| h.fill_chain(c, &mem));
        assert_eq!(len, 32);
        assert!(read(&mem, DATA_ADDR, 64).iter().all(|&b| b == 0));
    }

    #[test]
    fn caps_each_chain() {
        let h = handler();
        let mem = mem();
        let cap = MAX_BYTES_PER_CHAIN as u64;
        let descs = [
            D(DATA_ADDR, 0x3_0000, true),
            D(DATA_ADDR + 0x4_0000, 16, true),
        ];
        let len = run_chain(&mem, &descs, |c| h.fill_chain(c, &mem));
        assert_eq!(len, MAX_BYTES_PER_CHAIN);
        assert!(read(&mem, DATA_ADDR + cap, 0x1000).iter().all(|&b| b == 0));
        assert!(read(&mem, DATA_ADDR + 0x4_0000, 16).iter().all(|&b| b == 0));
    }

    #[test]
    fn stops_at_buffers_outside_memory() {
        let h = handler();
        let mem = mem();
        let end = MEM_SIZE as u64;
        let descs = [D(DATA_ADDR, 16, true), D(end - 8, 16, true)];
        let len = run_chain(&mem, &descs, |c| h.fill_chain(c, &mem));
        // The first buffer, and the part of the second inside memory.
        assert_eq!(len, 24);
        let len = run_chain(&mem, &[D(u64::MAX - 4, 16, true)], |c| {
            h.fill_chain(c, &mem)
        });
        assert_eq!(len, 0);
    }

    #[derive(Default)]
    struct CountingInterrupt(AtomicU64);

    impl Interrupt for CountingInterrupt {
        fn trigger(&self, kind: InterruptKind) {
            assert_eq!(kind, InterruptKind::Queue(0));
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn activate_serves_kicks_and_reset_returns_eventfds() {
        let mut rng = Rng::new().unwrap();
        assert_eq!(rng.device_type(), 4);
        assert_eq!(rng.queue_max_sizes(), &[256]);
        assert_ne!(rng.features() & VIRTIO_F_VERSION_1, 0);
        let metrics = rng.metrics();
        let mem = Arc::new(mem());
        let mock = MockSplitQueue::new(&*mem, 16);
        let queue: Queue = mock.create_queue().unwrap();
        let kick = EventFd::new(EFD_NONBLOCK).unwrap();
        let kick_clone = kick.try_clone().unwrap();
        let interrupt = Arc::new(CountingInterrupt::default());
        rng.activate(ActivateContext {
            mem: mem.clone(),
            queues: vec![ActiveQueue { queue, kick }],
            interrupt: interrupt.clone(),
            acked_features: rng.features(),
            notifications: Default::default(),
            shm: None,
        })
        .unwrap();

        let raw = [
            RawDescriptor::from(Descriptor::new(
                DATA_ADDR,
                256,
                (VRING_DESC_F_WRITE | VRING_DESC_F_NEXT) as u16,
                1,
            )),
            RawDescriptor::from(Descriptor::new(
                DATA_ADDR + 0x1000,
                256,
                VRING_DESC_F_WRITE as u16,
                0,
            )),
        ];
        mock.add_desc_chains(&raw, 0).unwrap();
        kick_clone.write(1).unwrap();

        let deadline = Instant::now() + Duration::from_secs(5);
        while mock.used().idx().load() == 0 || interrupt.0.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "used ring did not advance");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(mock.used().ring().ref_at(0).unwrap().load().len(), 512);
        assert!(read(&mem, DATA_ADDR, 256).iter().any(|&b| b != 0));
        assert_eq!(metrics.snapshot().bytes, 512);

        let kicks = rng.reset().expect("device was active");
        assert_eq!(kicks.len(), 1);
        assert!(rng.reset().is_none());
    }
}
