//! Parsing and executing one virtio-blk request.
//!
//! The chain is read as the spec's byte stream (virtio 1.3 §2.7.4: no
//! assumption about how descriptors split it): the device-readable part is the
//! 16-byte header followed by any data for the device, the device-writable
//! part is the data for the driver followed by the status byte, which is the
//! chain's last byte. Everything the guest wrote is checked before the image
//! is touched: segment addresses, lengths (capped at [`MAX_TRANSFER_BYTES`]),
//! the sector range (with overflow), the data direction and read-only mode.
//! A chain without a writable last byte gets used length 0; any other error is
//! reported through the status byte.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError, ReadVolatile,
    VolatileMemoryError, WriteVolatile,
};
use vmm_sys_util::fallocate::{fallocate, FallocateMode};

use super::metrics::{add, BlockMetrics};
use super::params::ID_BYTES;
use crate::GuestMemory;

/// Bytes per sector of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;
/// The most data one request may carry in either direction.
pub const MAX_TRANSFER_BYTES: u64 = 128 << 20;
/// The most sectors one DISCARD or WRITE_ZEROES segment may cover (1 GiB).
pub const MAX_DISCARD_SECTORS: u32 = 1 << 21;
/// Segments per DISCARD or WRITE_ZEROES request.
pub const MAX_DISCARD_SEGMENTS: u32 = 1;

const HEADER_LEN: u64 = 16;
const DISCARD_SEGMENT_LEN: u64 = 16;
const ZERO_CHUNK: usize = 64 << 10;
static ZEROES: [u8; ZERO_CHUNK] = [0; ZERO_CHUNK];

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("descriptor chain has no device-writable status byte")]
    NoStatus,
    #[error("device-readable descriptor after a device-writable one")]
    Misordered,
    #[error("request header is {0} bytes, expected 16")]
    ShortHeader(u64),
    #[error("descriptor at {addr:#x}+{len:#x} is outside guest memory")]
    BadAddress { addr: u64, len: u32 },
    #[error("request carries {0} bytes, more than the 128 MiB limit")]
    TooLarge(u64),
    #[error("data length {0} is not a multiple of 512")]
    Unaligned(u64),
    #[error("sector {sector} + {bytes} bytes is beyond the disk's {capacity} sectors")]
    OutOfRange {
        sector: u64,
        bytes: u64,
        capacity: u64,
    },
    #[error("data buffers have the wrong direction for this request")]
    WrongDirection,
    #[error("write to a read-only disk")]
    ReadOnly,
    #[error("expected one 16-byte discard/write-zeroes segment, got {0} bytes")]
    BadSegments(u64),
    #[error("discard/write-zeroes of {0} sectors exceeds the limit")]
    TooManySectors(u32),
    #[error("unsupported discard/write-zeroes flags {0:#x}")]
    BadFlags(u32),
    #[error("unsupported request type {0}")]
    Unsupported(u32),
    #[error("guest memory access failed")]
    Memory(#[source] GuestMemoryError),
    #[error("guest memory access failed")]
    Volatile(#[source] VolatileMemoryError),
    #[error("disk image I/O failed")]
    Io(#[source] io::Error),
}

impl RequestError {
    /// The status byte reported for this error.
    pub fn status(&self) -> u8 {
        match self {
            Self::Unsupported(_) | Self::BadFlags(_) => VIRTIO_BLK_S_UNSUPP as u8,
            _ => VIRTIO_BLK_S_IOERR as u8,
        }
    }

    /// True when the host, not the guest, is at fault.
    fn is_host_error(&self) -> bool {
        matches!(self, Self::Io(_))
    }
}

impl From<VolatileMemoryError> for RequestError {
    fn from(e: VolatileMemoryError) -> Self {
        match e {
            VolatileMemoryError::IOError(e) => Self::Io(e),
            e => Self::Volatile(e),
        }
    }
}

/// A guest buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// The request types the device knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    In,
    Out,
    Flush,
    GetId,
    Discard,
    WriteZeroes,
    Unsupported(u32),
}

impl From<u32> for RequestType {
    fn from(t: u32) -> Self {
        match t {
            VIRTIO_BLK_T_IN => Self::In,
            VIRTIO_BLK_T_OUT => Self::Out,
            VIRTIO_BLK_T_FLUSH => Self::Flush,
            VIRTIO_BLK_T_GET_ID => Self::GetId,
            VIRTIO_BLK_T_DISCARD => Self::Discard,
            VIRTIO_BLK_T_WRITE_ZEROES => Self::WriteZeroes,
            t => Self::Unsupported(t),
        }
    }
}

/// A chain split into its parts, before the header is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Device-readable buffers: header, then data.
    pub readable: Vec<Segment>,
    /// Device-writable buffers, status byte excluded.
    pub writable: Vec<Segment>,
    /// Address of the status byte.
    pub status: GuestAddress,
    /// A readable descriptor followed a writable one.
    pub misordered: bool,
}

impl Layout {
    /// Splits a chain's descriptors. Fails with [`RequestError::NoStatus`]
    /// when the last non-empty descriptor is not device-writable.
    pub fn new(descriptors: impl IntoIterator<Item = Descriptor>) -> Result<Self, RequestError> {
        let mut readable = Vec::new();
        let mut writable: Vec<Segment> = Vec::new();
        let mut misordered = false;
        let mut last_writable = false;
        for d in descriptors {
            if d.len() == 0 {
                continue;
            }
            let seg = Segment {
                addr: d.addr(),
                len: d.len(),
            };
            last_writable = d.is_write_only();
            if last_writable {
                writable.push(seg);
            } else {
                misordered |= !writable.is_empty();
                readable.push(seg);
            }
        }
        if !last_writable {
            return Err(RequestError::NoStatus);
        }
        let last = writable.last_mut().ok_or(RequestError::NoStatus)?;
        let status = last
            .addr
            .checked_add(u64::from(last.len) - 1)
            .ok_or(RequestError::NoStatus)?;
        last.len -= 1;
        if last.len == 0 {
            writable.pop();
        }
        Ok(Self {
            readable,
            writable,
            status,
            misordered,
        })
    }
}

/// A validated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub request_type: RequestType,
    pub sector: u64,
    /// Data for the device (after the header).
    pub data_out: Vec<Segment>,
    pub data_out_len: u64,
    /// Data for the driver (before the status byte).
    pub data_in: Vec<Segment>,
    pub data_in_len: u64,
}

impl Request {
    /// Reads the header and checks every buffer lies in guest memory and
    /// the transfer is within [`MAX_TRANSFER_BYTES`].
    pub fn parse(layout: &Layout, mem: &GuestMemory) -> Result<Self, RequestError> {
        if layout.misordered {
            return Err(RequestError::Misordered);
        }
        for seg in layout.readable.iter().chain(&layout.writable) {
            if !mem.check_range(seg.addr, seg.len as usize) {
                return Err(RequestError::BadAddress {
                    addr: seg.addr.raw_value(),
                    len: seg.len,
                });
            }
        }
        let readable_len = total_len(&layout.readable);
        if readable_len < HEADER_LEN {
            return Err(RequestError::ShortHeader(readable_len));
        }
        let mut header = [0u8; HEADER_LEN as usize];
        gather(mem, &layout.readable, &mut header)?;
        let [t0, t1, t2, t3, _, _, _, _, s @ ..] = header;
        let data_out = skip_bytes(&layout.readable, HEADER_LEN);
        let data_out_len = readable_len - HEADER_LEN;
        let data_in_len = total_len(&layout.writable);
        let largest = data_out_len.max(data_in_len);
        if largest > MAX_TRANSFER_BYTES {
            return Err(RequestError::TooLarge(largest));
        }
        Ok(Self {
            request_type: RequestType::from(u32::from_le_bytes([t0, t1, t2, t3])),
            sector: u64::from_le_bytes(s),
            data_out,
            data_out_len,
            data_in: layout.writable.clone(),
            data_in_len,
        })
    }
}

/// The disk image a device serves.
#[derive(Debug)]
pub struct Disk {
    file: File,
    capacity: u64,
    readonly: bool,
    id: [u8; ID_BYTES],
}

impl Disk {
    /// Wraps an open image of `capacity` sectors (the caller checks the file
    /// holds at least that much).
    pub fn new(file: File, capacity: u64, readonly: bool, id: [u8; ID_BYTES]) -> Self {
        Self {
            file,
            capacity,
            readonly,
            id,
        }
    }

    /// Size in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Whether writes, discards and write-zeroes are refused.
    pub fn readonly(&self) -> bool {
        self.readonly
    }

    /// Handles one chain end to end; returns the used length (bytes written
    /// into the chain).
    pub fn process_chain(
        &self,
        descriptors: impl IntoIterator<Item = Descriptor>,
        mem: &GuestMemory,
        metrics: &BlockMetrics,
    ) -> u32 {
        let layout = match Layout::new(descriptors) {
            Ok(layout) => layout,
            Err(e) => {
                log::debug!("virtio-blk: dropping request: {e}");
                add(&metrics.errors, 1);
                return 0;
            }
        };
        if !mem.check_range(layout.status, 1) {
            log::debug!(
                "virtio-blk: status byte at {:#x} is outside guest memory",
                layout.status.raw_value()
            );
            add(&metrics.errors, 1);
            return 0;
        }
        let (status, written) =
            match Request::parse(&layout, mem).and_then(|req| self.execute(&req, mem, metrics)) {
                Ok(written) => (VIRTIO_BLK_S_OK as u8, written),
                Err(e) => {
                    if e.is_host_error() {
                        crate::guest_warn!("virtio-blk: request failed: {}", error_chain(&e));
                    } else {
                        log::debug!("virtio-blk: request failed: {}", error_chain(&e));
                    }
                    add(&metrics.errors, 1);
                    (e.status(), 0)
                }
            };
        if let Err(e) = mem.write_obj(status, layout.status) {
            log::debug!("virtio-blk: cannot write status byte: {e}");
            return 0;
        }
        // `written` is at most MAX_TRANSFER_BYTES, far below u32::MAX.
        u32::try_from(written + 1).unwrap_or(u32::MAX)
    }

    /// Executes a parsed request; returns the data bytes written into the
    /// chain (status byte excluded).
    pub fn execute(
        &self,
        req: &Request,
        mem: &GuestMemory,
        metrics: &BlockMetrics,
    ) -> Result<u64, RequestError> {
        match req.request_type {
            RequestType::In => {
                add(&metrics.read_requests, 1);
                if req.data_out_len != 0 {
                    return Err(RequestError::WrongDirection);
                }
                let offset = self.check_range(req.sector, req.data_in_len)?;
                self.read_to_guest(offset, &req.data_in, mem)?;
                add(&metrics.read_bytes, req.data_in_len);
                Ok(req.data_in_len)
            }
            RequestType::Out => {
                add(&metrics.write_requests, 1);
                if req.data_in_len != 0 {
                    return Err(RequestError::WrongDirection);
                }
                if self.readonly {
                    return Err(RequestError::ReadOnly);
                }
                let offset = self.check_range(req.sector, req.data_out_len)?;
                self.write_from_guest(offset, &req.data_out, mem)?;
                add(&metrics.write_bytes, req.data_out_len);
                Ok(0)
            }
            RequestType::Flush => {
                add(&metrics.flush_requests, 1);
                self.file.sync_data().map_err(RequestError::Io)?;
                Ok(0)
            }
            RequestType::GetId => {
                if req.data_out_len != 0 {
                    return Err(RequestError::WrongDirection);
                }
                let n = (req.data_in_len as usize).min(ID_BYTES);
                scatter(mem, &req.data_in, &self.id[..n])?;
                Ok(n as u64)
            }
            RequestType::Discard => {
                add(&metrics.discard_requests, 1);
                let (offset, len, flags) = self.discard_range(req, mem)?;
                if flags != 0 {
                    return Err(RequestError::BadFlags(flags));
                }
                self.discard(offset, len)?;
                Ok(0)
            }
            RequestType::WriteZeroes => {
                add(&metrics.write_zeroes_requests, 1);
                let (offset, len, flags) = self.discard_range(req, mem)?;
                if flags & !VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0 {
                    return Err(RequestError::BadFlags(flags));
                }
                let unmap = flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
                self.write_zeroes(offset, len, unmap)?;
                Ok(0)
            }
            RequestType::Unsupported(t) => Err(RequestError::Unsupported(t)),
        }
    }

    /// Checks `bytes` at `sector` is a whole number of sectors within the
    /// disk; returns the byte offset.
    fn check_range(&self, sector: u64, bytes: u64) -> Result<u64, RequestError> {
        if bytes & (SECTOR_SIZE - 1) != 0 {
            return Err(RequestError::Unaligned(bytes));
        }
        let out_of_range = || RequestError::OutOfRange {
            sector,
            bytes,
            capacity: self.capacity,
        };
        let offset = sector.checked_mul(SECTOR_SIZE).ok_or_else(out_of_range)?;
        let end = offset.checked_add(bytes).ok_or_else(out_of_range)?;
        if end > self.capacity * SECTOR_SIZE {
            return Err(out_of_range());
        }
        Ok(offset)
    }

    /// Validates the single segment of a DISCARD or WRITE_ZEROES request;
    /// returns its byte offset, byte length and flags.
    fn discard_range(
        &self,
        req: &Request,
        mem: &GuestMemory,
    ) -> Result<(u64, u64, u32), RequestError> {
        if req.data_in_len != 0 {
            return Err(RequestError::WrongDirection);
        }
        if self.readonly {
            return Err(RequestError::ReadOnly);
        }
        if req.data_out_len != DISCARD_SEGMENT_LEN * u64::from(MAX_DISCARD_SEGMENTS) {
            return Err(RequestError::BadSegments(req.data_out_len));
        }
        let mut seg = [0u8; DISCARD_SEGMENT_LEN as usize];
        gather(mem, &req.data_out, &mut seg)?;
        let [s0, s1, s2, s3, s4, s5, s6, s7, n0, n1, n2, n3, f0, f1, f2, f3] = seg;
        let sector = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);
        let sectors = u32::from_le_bytes([n0, n1, n2, n3]);
        let flags = u32::from_le_bytes([f0, f1, f2, f3]);
        if sectors > MAX_DISCARD_SECTORS {
            return Err(RequestError::TooManySectors(sectors));
        }
        let len = u64::from(sectors) * SECTOR_SIZE;
        let offset = self.check_range(sector, len)?;
        Ok((offset, len, flags))
    }

    fn read_to_guest(
        &self,
        offset: u64,
        segs: &[Segment],
        mem: &GuestMemory,
    ) -> Result<(), RequestError> {
        let mut file = &self.file;
        file.seek(SeekFrom::Start(offset))
            .map_err(RequestError::Io)?;
        for seg in segs {
            for slice in mem.get_slices(seg.addr, seg.len as usize) {
                file.read_exact_volatile(&mut slice.map_err(RequestError::Memory)?)?;
            }
        }
        Ok(())
    }

    fn write_from_guest(
        &self,
        offset: u64,
        segs: &[Segment],
        mem: &GuestMemory,
    ) -> Result<(), RequestError> {
        let mut file = &self.file;
        file.seek(SeekFrom::Start(offset))
            .map_err(RequestError::Io)?;
        for seg in segs {
            for slice in mem.get_slices(seg.addr, seg.len as usize) {
                file.write_all_volatile(&slice.map_err(RequestError::Memory)?)?;
            }
        }
        Ok(())
    }

    /// Deallocates a range. Discard is advisory, so a backend without hole
    /// punching completes it successfully without doing anything.
    fn discard(&self, offset: u64, len: u64) -> Result<(), RequestError> {
        if len == 0 {
            return Ok(());
        }
        match fallocate(&self.file, FallocateMode::PunchHole, true, offset, len) {
            Ok(()) => Ok(()),
            Err(e) if is_unsupported(e.errno()) => Ok(()),
            Err(e) => Err(RequestError::Io(e.into())),
        }
    }

    /// Zeroes a range: by punching a hole when the driver allows unmapping,
    /// else (or when that fails) by ZERO_RANGE, else by writing zeroes.
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<(), RequestError> {
        if len == 0 {
            return Ok(());
        }
        if unmap && fallocate(&self.file, FallocateMode::PunchHole, true, offset, len).is_ok() {
            return Ok(());
        }
        if fallocate(&self.file, FallocateMode::ZeroRange, true, offset, len).is_ok() {
            return Ok(());
        }
        self.write_zero_bytes(offset, len)
    }

    /// Writes `len` zero bytes at `offset`, in bounded chunks.
    fn write_zero_bytes(&self, offset: u64, len: u64) -> Result<(), RequestError> {
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(ZERO_CHUNK as u64) as usize;
            self.file
                .write_all_at(&ZEROES[..n], offset + done)
                .map_err(RequestError::Io)?;
            done += n as u64;
        }
        Ok(())
    }
}

fn is_unsupported(errno: i32) -> bool {
    errno == libc::EOPNOTSUPP || errno == libc::ENOSYS || errno == libc::ENOTTY
}

fn total_len(segs: &[Segment]) -> u64 {
    segs.iter().map(|s| u64::from(s.len)).sum()
}

/// The segments left after dropping the first `n` bytes.
fn skip_bytes(segs: &[Segment], mut n: u64) -> Vec<Segment> {
    let mut out = Vec::new();
    for seg in segs {
        let len = u64::from(seg.len);
        if n >= len {
            n -= len;
            continue;
        }
        // n < len <= u32::MAX, and addr + len was checked to lie in memory.
        out.push(Segment {
            addr: seg.addr.unchecked_add(n),
            len: seg.len - n as u32,
        });
        n = 0;
    }
    out
}

/// Fills `buf` from the start of `segs`.
fn gather(mem: &GuestMemory, segs: &[Segment], buf: &mut [u8]) -> Result<(), RequestError> {
    let mut done = 0;
    for seg in segs {
        if done == buf.len() {
            break;
        }
        let n = (seg.len as usize).min(buf.len() - done);
        mem.read_slice(&mut buf[done..done + n], seg.addr)
            .map_err(RequestError::Memory)?;
        done += n;
    }
    if done < buf.len() {
        return Err(RequestError::ShortHeader(done as u64));
    }
    Ok(())
}

/// Writes `data` to the start of `segs` (which hold at least that much).
fn scatter(mem: &GuestMemory, segs: &[Segment], data: &[u8]) -> Result<(), RequestError> {
    let mut done = 0;
    for seg in segs {
        if done == data.len() {
            break;
        }
        let n = (seg.len as usize).min(data.len() - done);
        mem.write_slice(&data[done..done + n], seg.addr)
            .map_err(RequestError::Memory)?;
        done += n;
    }
    Ok(())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use virtio_bindings::virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueT};

    use super::*;
    use crate::virtio::worker::drain_queue;

    pub const MEM_SIZE: usize = 0x100_0000;
    pub const DATA_ADDR: u64 = 0x10_0000;

    /// A temporary file removed on drop.
    pub struct TempImage {
        pub path: PathBuf,
    }

    impl TempImage {
        pub fn new(content: &[u8]) -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "pv-blk-test-{}-{}.img",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::write(&path, content).unwrap();
            Self { path }
        }

        pub fn content(&self) -> Vec<u8> {
            std::fs::read(&self.path).unwrap()
        }
    }

    impl Drop for TempImage {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    /// Deterministic, non-zero image content: byte i of sector s.
    pub fn pattern(sectors: usize) -> Vec<u8> {
        (0..sectors * 512)
            .map(|i| ((i / 512) as u8).wrapping_mul(31) ^ (i as u8) | 1)
            .collect()
    }

    pub fn mem() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
    }

    /// A descriptor of the chain being built: address, length, writable.
    #[derive(Clone, Copy)]
    pub struct D(pub u64, pub u32, pub bool);

    /// Puts one chain on a fresh queue and runs `f` over it through
    /// `drain_queue`; returns the used length.
    pub fn run_chain<F>(mem: &GuestMemory, descs: &[D], mut f: F) -> u32
    where
        F: FnMut(virtio_queue::DescriptorChain<&GuestMemory>) -> u32,
    {
        let mock = MockSplitQueue::new(mem, 16);
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let mut flags = if d.2 { VRING_DESC_F_WRITE as u16 } else { 0 };
                if i + 1 < descs.len() {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                RawDescriptor::from(Descriptor::new(d.0, d.1, flags, (i + 1) as u16))
            })
            .collect();
        mock.add_desc_chains(&raw, 0).unwrap();
        let mut q: Queue = mock.create_queue().unwrap();
        drain_queue(&mut q, mem, &mut f);
        assert_eq!(q.next_used(), 1);
        let used = mock.used().ring().ref_at(0).unwrap().load();
        assert_eq!(used.id(), 0);
        used.len()
    }

    fn disk(img: &TempImage, readonly: bool) -> Disk {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!readonly)
            .open(&img.path)
            .unwrap();
        let capacity = file.metadata().unwrap().len() / SECTOR_SIZE;
        Disk::new(file, capacity, readonly, *b"test-serial\0\0\0\0\0\0\0\0\0")
    }

    const HDR: u64 = 0x1000;
    const STATUS: u64 = 0x2000;

    fn header(mem: &GuestMemory, t: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&t.to_le_bytes());
        h[4..8].copy_from_slice(&0xdead_beefu32.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(HDR)).unwrap();
        mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    }

    fn status(mem: &GuestMemory) -> u8 {
        mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    fn run(d: &Disk, mem: &GuestMemory, descs: &[D]) -> (u32, BlockMetrics) {
        let m = BlockMetrics::default();
        let len = run_chain(mem, descs, |c| d.process_chain(c, mem, &m));
        (len, m)
    }

    const OK: u8 = VIRTIO_BLK_S_OK as u8;
    const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
    const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

    #[test]
    fn read_returns_sectors() {
        let content = pattern(8);
        let img = TempImage::new(&content);
        let d = disk(&img, false);
        let mem = mem();
        header(&mem, VIRTIO_BLK_T_IN, 2);
        // Data split over two descriptors, the header over two as well.
        let descs = [
            D(HDR, 10, false),
            D(HDR + 10, 6, false),
            D(DATA_ADDR, 512, true),
            D(DATA_ADDR + 0x1000, 1024, true),
            D(STATUS, 1, true),
        ];
        let (len, m) = run(&d, &mem, &descs);
        assert_eq!(status(&mem), OK);
        assert_eq!(len, 1536 + 1);
        let mut got = vec![0u8; 512];
        mem.read_slice(&mut got, GuestAddress(DATA_ADDR)).unwrap();
        assert_eq!(got, content[1024..1536]);
        let mut got = vec![0u8; 1024];
        mem.read_slice(&mut got, GuestAddress(DATA_ADDR + 0x1000))
            .unwrap();
        assert_eq!(got, content[1536..2560]);
        let s = m.snapshot();
        assert_eq!((s.read_requests, s.read_bytes, s.errors), (1, 1536, 0));
    }

    #[test]
    fn indirect_chain_read() {
        let content = pattern(4);
        let img = TempImage::new(&content);
        let d = disk(&img, false);
        let mem = mem();
        header(&mem, VIRTIO_BLK_T_IN, 3);
        let table = [
            Descriptor::new(HDR, 16, VRING_DESC_F_NEXT as u16, 1),
            Descriptor::new(
                DATA_ADDR,
                512,
                (VRING_DESC_F_WRITE | VRING_DESC_F_NEXT) as u16,
                2,
            ),
            Descriptor::new(STATUS, 1, VRING_DESC_F_WRITE as u16, 0),
        ];
        let table_addr = GuestAddress(0x8000);
        for (i, desc) in table.iter().enumerate() {
            let at = table_addr.unchecked_add(16 * i as u64);
            mem.write_obj(RawDescriptor::from(*desc), at).unwrap();
        }
        let mock = MockSplitQueue::new(&mem, 16);
        let head = Descriptor::new(0x8000, 48, VRING_DESC_F_INDIRECT as u16, 0);
        mock.add_desc_chains(&[RawDescriptor::from(head)], 0)
            .unwrap();
        let mut q: Queue = mock.create_queue().unwrap();
        let m = BlockMetrics::default();
        let mut h_len = 0;
        drain_queue(&mut q, &mem, |c| {
            h_len = d.process_chain(c, &mem, &m);
            h_len
        });
        assert_eq!(h_len, 513);
        assert_eq!(mock.used().ring().ref_at(0).unwrap().load().len(), 513);
        assert_eq!(status(&mem), OK);
        let mut got = vec![0u8; 512];
        mem.read_slice(&mut got, GuestAddress(DATA_ADDR)).unwrap();
        assert_eq!(got, content[1536..2048]);
    }

    #[test]
    fn write_lands_in_file() {
        let img = TempImage::new(&pattern(8));
        let d = disk(&img, false);
        let mem = mem();
        header(&mem, VIRTIO_BLK_T_OUT, 3);
        let data: Vec<u8> = (0..1024).map(|i| (i % 251) as u8).collect();
        mem.write_slice(&data, GuestAddress(DATA_ADDR)).unwrap();
        let descs = [
            D(HDR, 16, false),
            D(DATA_ADDR, 1024, false),
            D(STATUS, 1, true),
        ];
        let (len, m) = run(&d, &mem, &descs);
        assert_eq!(status(&mem), OK);
        assert_eq!(len, 1);
        let mut want = pattern(8);
        want[3 * 512..5 * 512].copy_from_slice(&data);
        assert_eq!(img.content(), want);
        let s = m.snapshot();
        assert_eq!((s.write_requests, s.write_bytes), (1, 1024));
    }

    #[test]
    fn flush_and_get_id() {
        let img = TempImage::new(&pattern(2));
        let d = disk(&img, false);
        let mem = mem();
        header(&mem, VIRTIO_BLK_T_FLUSH, 0);
        let (len, m) = run(&d, &mem, &[D(HDR, 16, false), D(STATUS, 1, true)]);
        assert_eq!((status(&mem), len), (OK, 1));
        assert_eq!(m.snapshot().flush_requests, 1);

        header(&mem, VIRTIO_BLK_T_GET_ID, 0);
        let descs = [
            D(HDR, 16, false),
            D(DATA_ADDR, 20, true),
            D(STATUS, 1, true),
        ];
        let (len, _) = run(&d, &mem, &descs);
        assert_eq!((status(&mem), len), (OK, 21));
        let mut id = [0u8; 20];
        mem.read_slice(&mut id, GuestAddress(DATA_ADDR)).unwrap();
        assert_eq!(&id, b"test-serial\0\0\0\0\0\0\0\0\0");
    }

    #[test]
    fn out_of_range_is_ioerr() {
        let content = pattern(8);
        let img = TempImage::new(&content);
        let d = disk(&img, false);
        let mem = mem();
        mem.write_slice(&[0xaa; 1024], GuestAddress(DATA_ADDR))
            .unwrap();
        for (t, sector) in [
            (VIRTIO_BLK_T_OUT, 7),              // last sector + one past the end
            (VIRTIO_BLK_T_OUT, 8),              // starts at capacity
            (VIRTIO_BLK_T_OUT, u64::MAX / 512), // end overflows u64
            (VIRTIO_BLK_T_OUT, u64::MAX),       // sector * 512 overflows
            (VIRTIO_BLK_T_IN, 7),
            (VIRTIO_BLK_T_IN, u64::MAX),
        ] {
            header(&mem, t, sector);
            let dir = t == VIRTIO_BLK_T_IN;
            let descs = [
                D(HDR, 16, false),
                D(DATA_ADDR, 1024, dir),
                D(STATUS, 1, true),
            ];
            let (len, m) = run(&d, &mem, &descs);
            assert_eq!((status(&mem), len), (IOERR, 1), "type {t} sector {sector}");
            assert_eq!(m.snapshot().errors, 1);
        }
        assert_eq!(img.content(), content);
    }

    #[test]
    fn unaligned_length_is_ioerr() {
        let content = pattern(4);
        let img = TempImage::new(&content);
        let d = disk(&img, false);
        let mem = mem();
        header(&mem, VIRTIO_BLK_T_OUT, 0);
        let descs = [
            D(HDR, 16, false),
            D(DATA_ADDR, 100, false),
            D(STATUS, 1, true),
        ];
        assert_eq!(run(&d, &mem, &descs).0, 1);
        assert_eq!(status(&mem), IOERR);
        assert_eq!(img.content(), content);
    }

    #[test]
    fn readonly_rejects_writes() {
        let content = pattern(4);
        let img = TempImage::new(&content);
        let d = disk(&img, true);
        let mem = mem();
        header(&mem, VIRTIO_BLK_T_OUT, 0);
        let descs = [
            D(HDR, 16, false),
            D(DATA_ADDR, 512, false),
            D(STATUS, 1, true),
        ];
        assert_eq!(run(&d, &mem, &descs).0, 1);
        assert_eq!(status(&mem), IOERR);
        for t in [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES] {
            header(&mem, t, 0);
            write_segment(&mem, 0, 2, 0);
            let descs = [
                D(HDR, 16, false),
                D(DATA_ADDR, 16, false),
                D(STATUS, 1, true),
            ];
            assert_eq!(run(&d, &mem, &descs).0, 1);
            assert_eq!(status(&mem), IOERR);
        }
        assert_eq!(img.content(), content);
        // Reads still work.
        header(&mem, VIRTIO_BLK_T_IN, 1);
        let descs = [
            D(HDR, 16, false),
            D(DATA_ADDR, 512, true),
            D(STATUS, 1, true),
        ];
        assert_eq!(run(&d, &mem, &descs).0, 513);
        assert_eq!(status(&mem), OK);
    }

    #[test]
    fn unknown_type_is_unsupp() {
        let img = TempImage::new(&pattern(1));
        let d = disk(&img, false);
        let mem = mem();
        for t in [2, 5, 14, 0x8000_0000] {
            header(&mem, t, 0);
            let (len, _) = run(&d, &mem, &[D(HDR, 16, false), D(STATUS, 1, true)]);
            assert_eq!((status(&mem), len), (UNSUPP, 1));
        }
    }

    #[test]
    fn malformed_chains() {
        let content = pattern(4);
        let img = TempImage::new(&content);
        let d = disk(&img, false);
        let mem = mem();

        // Header too short: IOERR through the status byte.
        header(&mem, VIRTIO_BLK_T_IN, 0);
        let (len, _) = run(&d, &mem, &[D(HDR, 8, false), D(STATUS, 1, true)]);
        assert_eq!((status(&mem), len), (IOERR, 1));

        // No header at all.
        header(&mem, VIRTIO_BLK_T_IN, 0);
        let (len, _) = run(&d, &mem, &[D(STATUS, 1, true)]);
        assert_eq!((status(&mem), len), (IOERR, 1));

        // Status not writable: nothing written, used length 0.
        header(&mem, VIRTIO_BLK_T_IN, 0);
        let descs = [
            D(HDR, 16, false),
            D(DATA_ADDR, 512, true),
            D(STATUS, 1, false),
        ];
        let (len, m) = run(&d, &mem, &descs);
        assert_eq!((status(&mem), len), (0xff, 0));
        assert_eq!(m.snapshot().errors, 1);

        // Only a readable descriptor.
        let (len, _) = run(&d, &mem, &[D(HDR, 16, false)]);
        assert_eq!(len, 0);

        // Read with a device-readable data buffer.
        header(&mem, VIRTIO_BLK_T_IN, 0);
        let descs = [
            D(HDR, 16, false),
            D(DATA_ADDR, 512, false),
            D(STATUS, 1, true),
        ];
        let (len, _) = run(&d, &mem, &descs);
        assert_eq!((status(&mem), len), (IOERR, 1));

        // Write with a device-writable data buffer: file untouched.
        header(&mem, VIRTIO_BLK_T_OUT, 0);
        let descs = [
            D(HDR, 16, false),
            D(DATA_ADDR, 512, true),
            D(STATUS, 1, true),
        ];
        let (len, _) = run(&d, &mem, &descs);
        assert_eq!((status(&mem), len), (IOERR, 1));

        // Readable after writable.
        header(&mem, VIRTIO_BLK_T_OUT, 0);
        let descs = [
            D(HDR, 16, false),
            D(DATA_ADDR, 512, true),
            D(DATA_ADDR + 0x1000, 512, false),
            D(STATUS, 1, true),
        ];
        let (len, _) = run(&d, &mem, &descs);
        assert_eq!((status(&mem), len), (IOERR, 1));

        // Status descriptor longer than one byte: the extra byte makes the
        // read length unaligned, and the status is its last byte.
        header(&mem, VIRTIO_BLK_T_IN, 0);
        mem.write_obj(0xffu8, GuestAddress(STATUS + 1)).unwrap();
        let descs = [
            D(HDR, 16, false),
            D(DATA_ADDR, 512, true),
            D(STATUS, 2, true),
        ];
        let (len, _) = run(&d, &mem, &descs);
        assert_eq!(len, 1);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS + 1)).unwrap(), IOERR);

        // Zero-length descriptors are skipped.
        header(&mem, VIRTIO_BLK_T_FLUSH, 0);
        let descs = [
            D(HDR, 16, false),
            D(STATUS, 1, true),
            D(STATUS + 8, 0, true),
        ];
        let (len, _) = run(&d, &mem, &descs);
        assert_eq!((status(&mem), len), (OK, 1));

        assert_eq!(img.content(), content);
    }

    #[test]
    fn addresses_outside_memory() {
        let content = pattern(4);
        let img = TempImage::new(&content);
        let d = disk(&img, false);
        let mem = mem();
        let end = MEM_SIZE as u64;

        // Data buffer beyond the end of memory, for a read and a write.
        for (t, w) in [(VIRTIO_BLK_T_IN, true), (VIRTIO_BLK_T_OUT, false)] {
            header(&mem, t, 0);
            let descs = [D(HDR, 16, false), D(end - 256, 512, w), D(STATUS, 1, true)];
            let (len, _) = run(&d, &mem, &descs);
            assert_eq!((status(&mem), len), (IOERR, 1));
        }
        // Header outside memory.
        mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let (len, _) = run(&d, &mem, &[D(end + 0x1000, 16, false), D(STATUS, 1, true)]);
        assert_eq!((status(&mem), len), (IOERR, 1));
        // Address that wraps around.
        let (len, _) = run(&d, &mem, &[D(u64::MAX - 4, 16, false), D(STATUS, 1, true)]);
        assert_eq!((status(&mem), len), (IOERR, 1));
        // Status outside memory: nothing can be reported.
        header(&mem, VIRTIO_BLK_T_OUT, 0);
        let descs = [
            D(HDR, 16, false),
            D(DATA_ADDR, 512, false),
            D(end + 5, 1, true),
        ];
        assert_eq!(run(&d, &mem, &descs).0, 0);
        let descs = [D(HDR, 16, false), D(u64::MAX, 1, true)];
        assert_eq!(run(&d, &mem, &descs).0, 0);
        assert_eq!(img.content(), content);
    }

    #[test]
    fn oversized_transfer_is_ioerr() {
        let img = TempImage::new(&pattern(4));
        let d = disk(&img, false);
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x900_0000)]).unwrap();
        header(&mem, VIRTIO_BLK_T_IN, 0);
        let descs = [
            D(HDR, 16, false),
            D(DATA_ADDR, 0x400_0000, true),
            D(DATA_ADDR + 0x400_0000, 0x400_0000 + 512, true),
            D(STATUS, 1, true),
        ];
        let (len, _) = run(&d, &mem, &descs);
        assert_eq!((status(&mem), len), (IOERR, 1));
    }

    fn write_segment(mem: &GuestMemory, sector: u64, sectors: u32, flags: u32) {
        let mut seg = [0u8; 16];
        seg[..8].copy_from_slice(&sector.to_le_bytes());
        seg[8..12].copy_from_slice(&sectors.to_le_bytes());
        seg[12..].copy_from_slice(&flags.to_le_bytes());
        mem.write_slice(&seg, GuestAddress(DATA_ADDR)).unwrap();
    }

    fn zeroing(t: u32, flags: u32, sector: u64, sectors: u32) -> (u8, Vec<u8>) {
        let img = TempImage::new(&pattern(32));
        let d = disk(&img, false);
        let mem = mem();
        header(&mem, t, 0);
        write_segment(&mem, sector, sectors, flags);
        let descs = [
            D(HDR, 16, false),
            D(DATA_ADDR, 16, false),
            D(STATUS, 1, true),
        ];
        let (len, m) = run(&d, &mem, &descs);
        assert_eq!(len, 1);
        let s = m.snapshot();
        assert_eq!(s.discard_requests + s.write_zeroes_requests, 1);
        (status(&mem), img.content())
    }

    fn zeroed(start: usize, sectors: usize) -> Vec<u8> {
        let mut want = pattern(32);
        want[start * 512..(start + sectors) * 512].fill(0);
        want
    }

    #[test]
    fn discard_and_write_zeroes() {
        // Discard of a 4 KiB-aligned range punches a hole that reads as 0.
        let (st, content) = zeroing(VIRTIO_BLK_T_DISCARD, 0, 8, 16);
        assert_eq!(st, OK);
        assert_eq!(content.len(), 32 * 512);
        if content != pattern(32) {
            assert_eq!(content, zeroed(8, 16));
        }
        for flags in [0, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP] {
            let (st, content) = zeroing(VIRTIO_BLK_T_WRITE_ZEROES, flags, 3, 5);
            assert_eq!(st, OK);
            assert_eq!(content, zeroed(3, 5), "flags {flags}");
            let (st, content) = zeroing(VIRTIO_BLK_T_WRITE_ZEROES, flags, 8, 24);
            assert_eq!(st, OK);
            assert_eq!(content, zeroed(8, 24), "flags {flags}");
        }
    }

    #[test]
    fn discard_and_write_zeroes_errors() {
        let untouched = pattern(32);
        // Discard with UNMAP, or unknown flags: UNSUPP.
        assert_eq!(
            zeroing(VIRTIO_BLK_T_DISCARD, 1, 0, 1),
            (UNSUPP, untouched.clone())
        );
        assert_eq!(
            zeroing(VIRTIO_BLK_T_WRITE_ZEROES, 2, 0, 1),
            (UNSUPP, untouched.clone())
        );
        // Out of range / overflow / too large: IOERR.
        for t in [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES] {
            assert_eq!(zeroing(t, 0, 30, 3), (IOERR, untouched.clone()));
            assert_eq!(zeroing(t, 0, u64::MAX, 1), (IOERR, untouched.clone()));
            assert_eq!(zeroing(t, 0, u64::MAX / 512, 1), (IOERR, untouched.clone()));
            assert_eq!(
                zeroing(t, 0, 0, MAX_DISCARD_SECTORS + 1),
                (IOERR, untouched.clone())
            );
        }
        // Two segments: IOERR.
        let img = TempImage::new(&untouched);
        let d = disk(&img, false);
        let mem = mem();
        header(&mem, VIRTIO_BLK_T_WRITE_ZEROES, 0);
        write_segment(&mem, 0, 1, 0);
        let descs = [
            D(HDR, 16, false),
            D(DATA_ADDR, 32, false),
            D(STATUS, 1, true),
        ];
        assert_eq!(run(&d, &mem, &descs).0, 1);
        assert_eq!(status(&mem), IOERR);
        assert_eq!(img.content(), untouched);
    }

    #[test]
    fn zero_fallback_writes_zeroes() {
        let img = TempImage::new(&pattern(300));
        let d = disk(&img, false);
        d.write_zero_bytes(512, 290 * 512).unwrap();
        let mut want = pattern(300);
        want[512..291 * 512].fill(0);
        assert_eq!(img.content(), want);
    }

    #[test]
    fn skip_bytes_splits_segments() {
        let segs = [
            Segment {
                addr: GuestAddress(0x100),
                len: 10,
            },
            Segment {
                addr: GuestAddress(0x200),
                len: 10,
            },
        ];
        assert_eq!(
            skip_bytes(&segs, 12),
            vec![Segment {
                addr: GuestAddress(0x202),
                len: 8
            }]
        );
        assert_eq!(skip_bytes(&segs, 20), vec![]);
        assert_eq!(skip_bytes(&segs, 0), segs.to_vec());
    }
}
