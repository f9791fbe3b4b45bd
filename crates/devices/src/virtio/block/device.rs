//! The virtio-blk device: feature negotiation, configuration space and the
//! worker that serves the request queue.

use std::fs::OpenOptions;
use std::io::{self, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use super::metrics::BlockMetrics;
use super::params::{BlockParams, ParamsError};
use super::request::{Disk, MAX_DISCARD_SECTORS, MAX_DISCARD_SEGMENTS, SECTOR_SIZE};
use crate::virtio::worker::{drain_queue, QueueHandler, Worker};
use crate::virtio::{
    device_type, read_config_bytes, ActivateContext, ActivateError, VirtioDevice,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use crate::GuestMemory;

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Data segments per request advertised in `seg_max` (queue size minus the
/// header and status descriptors).
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Discard granularity advertised to the driver, in sectors (4 KiB).
pub const DISCARD_ALIGNMENT: u32 = 8;

/// Length of the configuration space we expose: `struct virtio_blk_config`
/// up to and including `write_zeroes_may_unmap` and its padding.
const CONFIG_LEN: usize = 60;

/// Errors creating a disk.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("invalid disk parameters")]
    Params(#[source] ParamsError),
    #[error("cannot open disk image '{}'", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot get the size of disk image '{}'", path.display())]
    Size {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("disk image '{}' is {size} bytes, smaller than one 512-byte sector", path.display())]
    TooSmall { path: PathBuf, size: u64 },
}

/// A virtio-blk device backed by a raw image file.
pub struct Block {
    disk: Arc<Disk>,
    features: u64,
    config: [u8; CONFIG_LEN],
    metrics: Arc<BlockMetrics>,
    thread_name: String,
    worker: Option<Worker<BlockHandler>>,
}

impl Block {
    /// Opens the image (read-only when `params.readonly`) and sizes the disk
    /// from it; a trailing partial sector is ignored with a warning.
    pub fn new(params: &BlockParams) -> Result<Self, BlockError> {
        static NEXT_INDEX: AtomicUsize = AtomicUsize::new(0);

        params.validate().map_err(BlockError::Params)?;
        let path = &params.path;
        let file = OpenOptions::new()
            .read(true)
            .write(!params.readonly)
            .open(path)
            .map_err(|source| BlockError::Open {
                path: path.clone(),
                source,
            })?;
        // Seeking to the end also sizes block devices, whose metadata says 0.
        let size = (&file)
            .seek(SeekFrom::End(0))
            .map_err(|source| BlockError::Size {
                path: path.clone(),
                source,
            })?;
        let capacity = size / SECTOR_SIZE;
        if capacity == 0 {
            return Err(BlockError::TooSmall {
                path: path.clone(),
                size,
            });
        }
        if size % SECTOR_SIZE != 0 {
            log::warn!(
                "disk image '{}' is {size} bytes, not a multiple of 512: the last {} bytes are not accessible",
                path.display(),
                size % SECTOR_SIZE
            );
        }
        let index = NEXT_INDEX.fetch_add(1, Ordering::Relaxed);
        Ok(Self::from_disk(
            Disk::new(file, capacity, params.readonly, params.device_id()),
            format!("virtio-blk-{index}"),
        ))
    }

    fn from_disk(disk: Disk, thread_name: String) -> Self {
        let mut features = VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | VIRTIO_RING_F_INDIRECT_DESC
            | (1 << VIRTIO_BLK_F_FLUSH)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_BLK_SIZE);
        if disk.readonly() {
            features |= 1 << VIRTIO_BLK_F_RO;
        } else {
            features |= (1 << VIRTIO_BLK_F_DISCARD) | (1 << VIRTIO_BLK_F_WRITE_ZEROES);
        }
        let config = build_config(disk.capacity(), !disk.readonly());
        Self {
            disk: Arc::new(disk),
            features,
            config,
            metrics: Arc::new(BlockMetrics::default()),
            thread_name,
            worker: None,
        }
    }

    /// The disk's counters, live while the device runs.
    pub fn metrics(&self) -> Arc<BlockMetrics> {
        self.metrics.clone()
    }

    /// Size in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.disk.capacity()
    }

    /// Name of the worker thread ("virtio-blk-N", N counting disks created).
    pub fn thread_name(&self) -> &str {
        &self.thread_name
    }
}

fn build_config(capacity: u64, writable: bool) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    let mut put = |offset: usize, bytes: &[u8]| {
        c[offset..offset + bytes.len()].copy_from_slice(bytes);
    };
    put(0, &capacity.to_le_bytes());
    // size_max (8) and geometry (16) are not offered.
    put(12, &SEG_MAX.to_le_bytes());
    put(20, &(SECTOR_SIZE as u32).to_le_bytes());
    // topology (24), writeback (32), num_queues (34) are not offered.
    if writable {
        put(36, &MAX_DISCARD_SECTORS.to_le_bytes());
        put(40, &MAX_DISCARD_SEGMENTS.to_le_bytes());
        put(44, &DISCARD_ALIGNMENT.to_le_bytes());
        put(48, &MAX_DISCARD_SECTORS.to_le_bytes());
        put(52, &MAX_DISCARD_SEGMENTS.to_le_bytes());
        put(56, &[1]);
    }
    c
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn metrics(&self) -> Option<serde_json::Value> {
        serde_json::to_value(self.metrics.snapshot()).ok()
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, mut ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.worker.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        ctx.prepare_queues(1)?;
        let handler = BlockHandler {
            disk: self.disk.clone(),
            metrics: self.metrics.clone(),
        };
        let worker =
            Worker::spawn(&self.thread_name, handler, ctx).map_err(ActivateError::Worker)?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) -> Option<Vec<EventFd>> {
        let worker = self.worker.take()?;
        match worker.stop() {
            Some((_, kicks)) => Some(kicks),
            None => {
                log::error!("{}: worker thread panicked", self.thread_name);
                None
            }
        }
    }
}

/// Serves the request queue on the worker thread.
pub struct BlockHandler {
    disk: Arc<Disk>,
    metrics: Arc<BlockMetrics>,
}

impl BlockHandler {
    /// A handler for `disk`, independent of any [`Block`] (for tests and
    /// benchmarks).
    pub fn new(disk: Arc<Disk>, metrics: Arc<BlockMetrics>) -> Self {
        Self { disk, metrics }
    }
}

impl QueueHandler for BlockHandler {
    fn process_queue(&mut self, _index: usize, queue: &mut Queue, mem: &GuestMemory) -> bool {
        drain_queue(queue, mem, |chain| {
            self.disk.process_chain(chain, mem, &self.metrics)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;
    use std::time::{Duration, Instant};

    use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN};
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    use super::*;
    use crate::virtio::block::request::tests::{mem, pattern, TempImage, DATA_ADDR};
    use crate::virtio::{ActiveQueue, Interrupt, InterruptKind};

    #[test]
    fn new_checks_the_image() {
        let img = TempImage::new(&pattern(3));
        let blk = Block::new(&BlockParams::new(&img.path)).unwrap();
        assert_eq!(blk.capacity(), 3);
        assert_eq!(blk.device_type(), 2);
        assert_eq!(blk.queue_max_sizes(), &[256]);
        let f = blk.features();
        assert_ne!(f & VIRTIO_F_VERSION_1, 0);
        assert_ne!(f & (1 << VIRTIO_BLK_F_DISCARD), 0);
        assert_ne!(f & (1 << VIRTIO_BLK_F_WRITE_ZEROES), 0);
        assert_eq!(f & (1 << VIRTIO_BLK_F_RO), 0);
        assert!(blk.thread_name().starts_with("virtio-blk-"));

        // Trailing partial sector is fine.
        let mut content = pattern(2);
        content.extend_from_slice(&[1; 100]);
        let img = TempImage::new(&content);
        assert_eq!(
            Block::new(&BlockParams::new(&img.path)).unwrap().capacity(),
            2
        );

        for content in [&[][..], &[7u8; 511][..]] {
            let img = TempImage::new(content);
            let err = Block::new(&BlockParams::new(&img.path)).err().unwrap();
            assert!(matches!(err, BlockError::TooSmall { .. }), "{err}");
        }

        let err = Block::new(&BlockParams::new("/nonexistent/pv-x.img"))
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "cannot open disk image '/nonexistent/pv-x.img'"
        );
        assert!(std::error::Error::source(&err).is_some());

        let mut p = BlockParams::new(&img.path);
        p.id = Some("x".repeat(21));
        assert!(matches!(Block::new(&p), Err(BlockError::Params(_))));
    }

    #[test]
    fn readonly_features_and_config() {
        let img = TempImage::new(&pattern(4));
        let mut p = BlockParams::new(&img.path);
        p.readonly = true;
        p.id = Some("ro-disk".into());
        let blk = Block::new(&p).unwrap();
        let f = blk.features();
        assert_ne!(f & (1 << VIRTIO_BLK_F_RO), 0);
        assert_eq!(f & (1 << VIRTIO_BLK_F_DISCARD), 0);
        assert_eq!(f & (1 << VIRTIO_BLK_F_WRITE_ZEROES), 0);
        let mut cap = [0u8; 8];
        blk.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 4);
        let mut discard = [0xffu8; 4];
        blk.read_config(36, &mut discard);
        assert_eq!(discard, [0; 4]);
    }

    #[test]
    fn config_layout() {
        let img = TempImage::new(&pattern(10));
        let blk = Block::new(&BlockParams::new(&img.path)).unwrap();
        let mut c = [0u8; 64];
        blk.read_config(0, &mut c);
        let u32_at = |o: usize| u32::from_le_bytes(c[o..o + 4].try_into().unwrap());
        assert_eq!(u64::from_le_bytes(c[..8].try_into().unwrap()), 10);
        assert_eq!(u32_at(12), SEG_MAX);
        assert_eq!(u32_at(20), 512);
        assert_eq!(u32_at(36), MAX_DISCARD_SECTORS);
        assert_eq!(u32_at(40), 1);
        assert_eq!(u32_at(44), DISCARD_ALIGNMENT);
        assert_eq!(u32_at(48), MAX_DISCARD_SECTORS);
        assert_eq!(u32_at(52), 1);
        assert_eq!(c[56], 1);
        assert_eq!(&c[57..], &[0; 7]);
        // Partial, unaligned read.
        let mut b = [0u8; 2];
        blk.read_config(20, &mut b);
        assert_eq!(b, [0, 2]);
    }

    #[derive(Default)]
    struct CountingInterrupt {
        queue: AtomicU64,
        config: AtomicU64,
    }

    impl Interrupt for CountingInterrupt {
        fn trigger(&self, kind: InterruptKind) {
            match kind {
                InterruptKind::Queue(0) => self.queue.fetch_add(1, Ordering::SeqCst),
                _ => self.config.fetch_add(1, Ordering::SeqCst),
            };
        }
    }

    #[test]
    fn activate_serves_kicks_and_reset_returns_eventfds() {
        let content = pattern(4);
        let img = TempImage::new(&content);
        let mut blk = Block::new(&BlockParams::new(&img.path)).unwrap();
        let metrics = blk.metrics();
        let mem = Arc::new(mem());
        let mock = MockSplitQueue::new(&*mem, 16);
        let queue: Queue = mock.create_queue().unwrap();
        let kick = EventFd::new(EFD_NONBLOCK).unwrap();
        let kick_clone = kick.try_clone().unwrap();
        let interrupt = Arc::new(CountingInterrupt::default());

        // Wrong queue count is refused.
        let err = blk
            .activate(ActivateContext {
                mem: mem.clone(),
                queues: vec![],
                interrupt: interrupt.clone(),
                acked_features: blk.features(),
                notifications: Default::default(),
                shm: None,
            })
            .unwrap_err();
        assert!(matches!(err, ActivateError::QueueCount { .. }));

        blk.activate(ActivateContext {
            mem: mem.clone(),
            queues: vec![ActiveQueue { queue, kick }],
            interrupt: interrupt.clone(),
            acked_features: blk.features(),
            notifications: Default::default(),
            shm: None,
        })
        .unwrap();

        // A read of sector 1 into DATA_ADDR.
        let mut header = [0u8; 16];
        header[..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
        header[8..].copy_from_slice(&1u64.to_le_bytes());
        mem.write_slice(&header, GuestAddress(0x1000)).unwrap();
        mem.write_obj(0xffu8, GuestAddress(0x2000)).unwrap();
        let descs = [
            (0x1000, 16, 0),
            (DATA_ADDR, 512, VRING_DESC_F_WRITE),
            (0x2000, 1, VRING_DESC_F_WRITE),
        ];
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, flags))| {
                let next = if i + 1 < descs.len() {
                    VRING_DESC_F_NEXT
                } else {
                    0
                };
                RawDescriptor::from(Descriptor::new(
                    addr,
                    len,
                    (flags | next) as u16,
                    (i + 1) as u16,
                ))
            })
            .collect();
        mock.add_desc_chains(&raw, 0).unwrap();
        kick_clone.write(1).unwrap();

        let deadline = Instant::now() + Duration::from_secs(5);
        while mock.used().idx().load() == 0 || interrupt.queue.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "used ring did not advance");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(mock.used().idx().load(), 1);
        assert_eq!(mock.used().ring().ref_at(0).unwrap().load().len(), 513);
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(0x2000)).unwrap(),
            VIRTIO_BLK_S_OK as u8
        );
        let mut got = vec![0u8; 512];
        mem.read_slice(&mut got, GuestAddress(DATA_ADDR)).unwrap();
        assert_eq!(got, content[512..1024]);
        assert_eq!(metrics.snapshot().read_bytes, 512);

        let err = blk
            .activate(ActivateContext {
                mem: mem.clone(),
                queues: vec![],
                interrupt: interrupt.clone(),
                acked_features: 0,
                notifications: Default::default(),
                shm: None,
            })
            .unwrap_err();
        assert!(matches!(err, ActivateError::AlreadyActive));

        let kicks = blk.reset().expect("device was active");
        assert_eq!(kicks.len(), 1);
        assert!(blk.reset().is_none());
        assert_eq!(interrupt.config.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn handler_runs_without_a_device() {
        let img = TempImage::new(&pattern(2));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&img.path)
            .unwrap();
        let disk = Disk::new(file, 2, false, [b'a'; 20]);
        let mut h = BlockHandler::new(Arc::new(disk), Arc::default());
        let mem = mem();
        let mock = MockSplitQueue::new(&mem, 16);
        let mut q: Queue = mock.create_queue().unwrap();
        // Nothing available: no interrupt.
        assert!(!h.process_queue(0, &mut q, &mem));
    }
}
