//! The 2D backend: resources as host memory, filled from guest pages.
//!
//! A resource is a `width * 4`-byte-stride pixel buffer on the host plus,
//! once attached, its backing: the guest's scatter list of (address, length)
//! runs, every one checked to lie in guest memory when attached (runs that
//! continue the previous one are merged, empty ones dropped). The bytes
//! held (pixels, plus the backing tables) count against `max_hostmem`;
//! RESOURCE_CREATE_2D or ATTACH_BACKING beyond it fails with
//! [`BackendError::OutOfMemory`], and the number of live resources is capped
//! by [`MAX_RESOURCES`].
//!
//! TRANSFER_TO_HOST_2D copies straight from guest memory into the resource
//! (vm-memory volatile slices, one `memcpy` per backing run and row): a
//! full-width transfer is one contiguous copy, a partial one a copy per row
//! at `offset + row * stride`, as QEMU and crosvm do. Large resources are
//! page-aligned so these copies run at memcpy speed (see `PixelBuf`).

use std::collections::HashMap;

use pv_devices::GuestMemory;
use pv_display::Rect;
use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::backend::{BackendError, BackendUsage, GpuBackend, ResourceInfo, ResourceView};
use super::protocol::{pixel_format, MemEntry};

/// Live resources one guest may hold.
pub const MAX_RESOURCES: usize = 65536;
/// Host bytes one backing entry costs (address, length, offset).
pub const BACKING_ENTRY_COST: u64 = 24;
/// Bytes per pixel of every 2D format.
const BPP: u64 = 4;

/// A guest scatter list with each run's offset in the resource's backing.
#[derive(Debug)]
struct Backing {
    entries: Vec<MemEntry>,
    /// `starts[i]`: offset of entry `i`; ascending.
    starts: Vec<u64>,
    len: u64,
}

impl Backing {
    /// The backing of `entries`, with empty runs dropped and runs that
    /// continue the previous one merged into it.
    fn new(entries: Vec<MemEntry>) -> Self {
        let mut runs: Vec<MemEntry> = Vec::with_capacity(entries.len());
        for e in entries.into_iter().filter(|e| e.length > 0) {
            if let Some(last) = runs.last_mut() {
                let end = last.addr.checked_add(u64::from(last.length));
                if let (Some(end), Some(length)) = (end, last.length.checked_add(e.length)) {
                    if end == e.addr {
                        last.length = length;
                        continue;
                    }
                }
            }
            runs.push(e);
        }
        // Hold (and charge) only the runs kept, not one slot per entry sent.
        runs.shrink_to_fit();
        let mut starts = Vec::with_capacity(runs.len());
        let mut len = 0u64;
        for e in &runs {
            starts.push(len);
            // At most 16384 entries of u32 lengths: no overflow.
            len += u64::from(e.length);
        }
        Self {
            entries: runs,
            starts,
            len,
        }
    }

    fn cost(&self) -> u64 {
        self.entries.len() as u64 * BACKING_ENTRY_COST
    }

    /// The run holding byte `offset`: first the run at `hint` and the few
    /// after it (rows of a transfer walk forward), else a binary search.
    fn locate(&self, offset: u64, hint: usize) -> Option<usize> {
        let mut i = hint;
        for _ in 0..4 {
            match self.starts.get(i) {
                Some(&start) if start <= offset => {
                    if self.starts.get(i + 1).is_none_or(|&next| next > offset) {
                        return Some(i);
                    }
                    i += 1;
                }
                _ => break,
            }
        }
        self.starts.partition_point(|&s| s <= offset).checked_sub(1)
    }

    /// Fills `dst` from the backing's bytes at `offset`. The caller checked
    /// `offset + dst.len() <= self.len`. `hint` is a run index to start
    /// looking from; it is left at the last run read.
    fn read(
        &self,
        mem: &GuestMemory,
        offset: u64,
        dst: &mut [u8],
        hint: &mut usize,
    ) -> Result<(), BackendError> {
        let end = offset.saturating_add(dst.len() as u64);
        let outside = || BackendError::OutsideBacking { end, len: self.len };
        let mut i = self.locate(offset, *hint).ok_or_else(outside)?;
        let mut skip = offset - self.starts[i];
        let mut done = 0usize;
        while done < dst.len() {
            let e = self.entries.get(i).ok_or_else(outside)?;
            let avail = u64::from(e.length).saturating_sub(skip);
            let n = avail.min((dst.len() - done) as u64) as usize;
            if n > 0 {
                // addr + skip lies in the run, which was checked to be in
                // guest memory.
                let addr = GuestAddress(e.addr.wrapping_add(skip));
                let piece = &mut dst[done..done + n];
                match mem.get_slice(addr, n) {
                    Ok(slice) => {
                        slice.copy_to(piece);
                    }
                    // The run spans two memory regions.
                    Err(_) => {
                        let mut pos = 0;
                        for slice in mem.get_slices(addr, n) {
                            let slice = slice.map_err(BackendError::Memory)?;
                            pos += slice.copy_to(&mut piece[pos..]);
                        }
                        if pos != n {
                            return Err(outside());
                        }
                    }
                }
                done += n;
            }
            *hint = i;
            i += 1;
            skip = 0;
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Resource {
    info: ResourceInfo,
    stride: u32,
    data: PixelBuf,
    backing: Option<Backing>,
}

/// Resources in host memory (see the module docs).
#[derive(Debug)]
pub struct Backend2d {
    resources: HashMap<u32, Resource>,
    max_hostmem: u64,
    host_bytes: u64,
}

impl Backend2d {
    /// A backend holding at most `max_hostmem` bytes for the guest.
    pub fn new(max_hostmem: u64) -> Self {
        Self {
            resources: HashMap::new(),
            max_hostmem,
            host_bytes: 0,
        }
    }

    /// The cap on host memory.
    pub fn max_hostmem(&self) -> u64 {
        self.max_hostmem
    }

    fn get(&self, id: u32) -> Result<&Resource, BackendError> {
        self.resources
            .get(&id)
            .ok_or(BackendError::UnknownResource(id))
    }

    fn get_mut(&mut self, id: u32) -> Result<&mut Resource, BackendError> {
        self.resources
            .get_mut(&id)
            .ok_or(BackendError::UnknownResource(id))
    }

    /// Reserves `need` bytes of the cap.
    fn charge(&mut self, need: u64) -> Result<(), BackendError> {
        match self.host_bytes.checked_add(need) {
            Some(total) if total <= self.max_hostmem => {
                self.host_bytes = total;
                Ok(())
            }
            _ => Err(BackendError::OutOfMemory {
                need,
                used: self.host_bytes,
                max: self.max_hostmem,
            }),
        }
    }

    fn release(&mut self, bytes: u64) {
        self.host_bytes = self.host_bytes.saturating_sub(bytes);
    }
}

/// A resource's pixels. Buffers of [`ALIGN_MIN`] bytes or more start on a
/// 4 KiB boundary, like the guest pages they are copied from: a destination
/// a few bytes off the source's page offset makes every load wait on an
/// earlier store to the same 4 KiB offset ("4K aliasing"), which made
/// page-by-page transfers six times slower than a plain memcpy. The padding
/// (under 4 KiB a buffer) is not charged to `max_hostmem`.
#[derive(Debug)]
struct PixelBuf {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

/// Buffers at least this large are page-aligned.
const ALIGN_MIN: usize = 64 << 10;
const PAGE: usize = 4096;

impl PixelBuf {
    /// A zeroed buffer of `bytes`, or None when the host can't allocate it.
    fn zeroed(bytes: u64) -> Option<Self> {
        let len = usize::try_from(bytes).ok()?;
        let pad = if len >= ALIGN_MIN { PAGE - 1 } else { 0 };
        let total = len.checked_add(pad)?;
        let mut buf = Vec::new();
        buf.try_reserve_exact(total).ok()?;
        buf.resize(total, 0);
        let start = buf.as_ptr().align_offset(PAGE).min(pad);
        Some(Self { buf, start, len })
    }

    fn len(&self) -> usize {
        self.len
    }

    fn as_slice(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

/// Checks `rect` lies within a `width` x `height` resource (overflow-safe).
pub fn check_rect(rect: Rect, width: u32, height: u32) -> Result<(), BackendError> {
    let fits =
        |start: u32, len: u32, limit: u32| start.checked_add(len).is_some_and(|e| e <= limit);
    if fits(rect.x, rect.width, width) && fits(rect.y, rect.height, height) {
        Ok(())
    } else {
        Err(BackendError::OutsideResource {
            rect,
            width,
            height,
        })
    }
}

impl GpuBackend for Backend2d {
    fn create_2d(
        &mut self,
        resource_id: u32,
        format: u32,
        width: u32,
        height: u32,
    ) -> Result<(), BackendError> {
        if resource_id == 0 {
            return Err(BackendError::ZeroResourceId);
        }
        if self.resources.contains_key(&resource_id) {
            return Err(BackendError::ResourceExists(resource_id));
        }
        let format = pixel_format(format).ok_or(BackendError::BadFormat(format))?;
        let bad_size = BackendError::BadSize { width, height };
        if width == 0 || height == 0 {
            return Err(bad_size);
        }
        // width * 4 must fit the u32 stride; the product can't overflow u64.
        let stride = width.checked_mul(BPP as u32).ok_or(bad_size)?;
        let bytes = u64::from(stride) * u64::from(height);
        if self.resources.len() >= MAX_RESOURCES {
            return Err(BackendError::TooManyResources(MAX_RESOURCES));
        }
        self.charge(bytes)?;
        let data = match PixelBuf::zeroed(bytes) {
            Some(data) => data,
            None => {
                self.release(bytes);
                return Err(BackendError::Alloc(bytes));
            }
        };
        self.resources.insert(
            resource_id,
            Resource {
                info: ResourceInfo {
                    width,
                    height,
                    format,
                },
                stride,
                data,
                backing: None,
            },
        );
        Ok(())
    }

    fn unref(&mut self, resource_id: u32) -> Result<(), BackendError> {
        let res = self
            .resources
            .remove(&resource_id)
            .ok_or(BackendError::UnknownResource(resource_id))?;
        let freed = res.data.len() as u64 + res.backing.as_ref().map_or(0, Backing::cost);
        self.release(freed);
        Ok(())
    }

    fn attach_backing(
        &mut self,
        resource_id: u32,
        entries: Vec<MemEntry>,
        mem: &GuestMemory,
    ) -> Result<(), BackendError> {
        let res = self.get(resource_id)?;
        if res.backing.is_some() {
            return Err(BackendError::BackingAttached(resource_id));
        }
        if entries.is_empty() {
            return Err(BackendError::NoEntries);
        }
        for e in &entries {
            if !mem.check_range(GuestAddress(e.addr), e.length as usize) {
                return Err(BackendError::BadBacking {
                    addr: e.addr,
                    len: e.length,
                });
            }
        }
        let backing = Backing::new(entries);
        self.charge(backing.cost())?;
        self.get_mut(resource_id)?.backing = Some(backing);
        Ok(())
    }

    fn detach_backing(&mut self, resource_id: u32) -> Result<(), BackendError> {
        let backing = self
            .get_mut(resource_id)?
            .backing
            .take()
            .ok_or(BackendError::NoBacking(resource_id))?;
        self.release(backing.cost());
        Ok(())
    }

    fn transfer_to_host_2d(
        &mut self,
        resource_id: u32,
        rect: Rect,
        offset: u64,
        mem: &GuestMemory,
    ) -> Result<u64, BackendError> {
        let res = self.get_mut(resource_id)?;
        let ResourceInfo { width, height, .. } = res.info;
        check_rect(rect, width, height)?;
        let backing = res
            .backing
            .as_ref()
            .ok_or(BackendError::NoBacking(resource_id))?;
        if rect.is_empty() {
            return Ok(0);
        }
        let stride = u64::from(res.stride);
        let row = u64::from(rect.width) * BPP;
        // The last row ends at offset + (height - 1) * stride + row; all
        // factors are below 2^32, so only the additions can overflow.
        let end = (u64::from(rect.height) - 1)
            .checked_mul(stride)
            .and_then(|v| v.checked_add(row))
            .and_then(|v| v.checked_add(offset));
        match end {
            Some(end) if end <= backing.len => {}
            _ => {
                return Err(BackendError::OutsideBacking {
                    end: end.unwrap_or(u64::MAX),
                    len: backing.len,
                })
            }
        }
        // Indexes below are within data.len() = stride * height by check_rect.
        let first = u64::from(rect.y) * stride + u64::from(rect.x) * BPP;
        let mut hint = 0;
        if rect.width == width {
            // Whole rows: one contiguous run on both sides.
            let n = stride * u64::from(rect.height);
            let dst = &mut res.data.as_mut_slice()[first as usize..(first + n) as usize];
            backing.read(mem, offset, dst, &mut hint)?;
        } else {
            let data = res.data.as_mut_slice();
            for i in 0..u64::from(rect.height) {
                let start = (first + i * stride) as usize;
                let dst = &mut data[start..start + row as usize];
                backing.read(mem, offset + i * stride, dst, &mut hint)?;
            }
        }
        Ok(row * u64::from(rect.height))
    }

    fn info(&self, resource_id: u32) -> Result<ResourceInfo, BackendError> {
        Ok(self.get(resource_id)?.info)
    }

    fn view(&mut self, resource_id: u32) -> Result<ResourceView<'_>, BackendError> {
        let res = self.get(resource_id)?;
        Ok(ResourceView {
            info: res.info,
            stride: res.stride,
            data: res.data.as_slice(),
        })
    }

    fn usage(&self) -> BackendUsage {
        BackendUsage {
            resources: self.resources.len() as u64,
            host_bytes: self.host_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use pv_display::PixelFormat;
    use vm_memory::Bytes;

    use super::*;
    use crate::virtio_gpu::protocol::{
        FORMAT_B8G8R8X8_UNORM, RESP_ERR_INVALID_PARAMETER, RESP_ERR_INVALID_RESOURCE_ID,
        RESP_ERR_OUT_OF_MEMORY, RESP_ERR_UNSPEC,
    };

    const MEM_SIZE: usize = 0x40_0000;

    fn mem() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
    }

    fn entry(addr: u64, length: u32) -> MemEntry {
        MemEntry { addr, length }
    }

    #[test]
    fn create_checks_ids_formats_sizes_and_the_cap() {
        let mut b = Backend2d::new(1 << 20);
        let f = FORMAT_B8G8R8X8_UNORM;
        b.create_2d(1, f, 16, 8).unwrap();
        assert_eq!(
            b.info(1).unwrap(),
            ResourceInfo {
                width: 16,
                height: 8,
                format: PixelFormat::B8G8R8X8
            }
        );
        assert_eq!(
            b.usage(),
            BackendUsage {
                resources: 1,
                host_bytes: 512
            }
        );
        let err = |r: Result<(), BackendError>| r.unwrap_err().response_type();
        assert_eq!(err(b.create_2d(1, f, 1, 1)), RESP_ERR_INVALID_RESOURCE_ID);
        assert_eq!(err(b.create_2d(0, f, 1, 1)), RESP_ERR_INVALID_RESOURCE_ID);
        assert_eq!(err(b.create_2d(2, 0, 1, 1)), RESP_ERR_INVALID_PARAMETER);
        assert_eq!(err(b.create_2d(2, f, 0, 1)), RESP_ERR_INVALID_PARAMETER);
        assert_eq!(err(b.create_2d(2, f, 1, 0)), RESP_ERR_INVALID_PARAMETER);
        assert_eq!(
            err(b.create_2d(2, f, u32::MAX, 1)),
            RESP_ERR_INVALID_PARAMETER
        );
        assert_eq!(
            err(b.create_2d(2, f, 1 << 28, 1 << 28)),
            RESP_ERR_OUT_OF_MEMORY
        );
        assert_eq!(err(b.create_2d(2, f, 512, 512)), RESP_ERR_OUT_OF_MEMORY);
        // Exactly the rest of the cap fits.
        b.create_2d(2, f, 256, 1023).unwrap();
        b.create_2d(3, f, 32, 4).unwrap();
        assert_eq!(b.usage().host_bytes, 1 << 20);
        assert_eq!(err(b.create_2d(4, f, 1, 1)), RESP_ERR_OUT_OF_MEMORY);
        b.unref(2).unwrap();
        b.create_2d(4, f, 1, 1).unwrap();
        assert_eq!(b.usage().resources, 3);
        assert_eq!(err(b.unref(2)), RESP_ERR_INVALID_RESOURCE_ID);
    }

    #[test]
    fn resource_count_is_capped() {
        let mut b = Backend2d::new(u64::MAX);
        for id in 1..=MAX_RESOURCES as u32 {
            b.create_2d(id, FORMAT_B8G8R8X8_UNORM, 1, 1).unwrap();
        }
        let e = b
            .create_2d(0xffff_ffff, FORMAT_B8G8R8X8_UNORM, 1, 1)
            .unwrap_err();
        assert!(matches!(e, BackendError::TooManyResources(_)));
        assert_eq!(e.response_type(), RESP_ERR_OUT_OF_MEMORY);
    }

    #[test]
    fn backing_is_checked_and_charged() {
        let mem = mem();
        let mut b = Backend2d::new(4096 + 2 * BACKING_ENTRY_COST);
        b.create_2d(1, FORMAT_B8G8R8X8_UNORM, 32, 32).unwrap();
        let code = |r: Result<(), BackendError>| r.unwrap_err().response_type();
        assert_eq!(
            code(b.attach_backing(9, vec![entry(0, 1)], &mem)),
            RESP_ERR_INVALID_RESOURCE_ID
        );
        assert_eq!(
            code(b.attach_backing(1, vec![], &mem)),
            RESP_ERR_INVALID_PARAMETER
        );
        for bad in [
            entry(MEM_SIZE as u64, 1),
            entry(MEM_SIZE as u64 - 4095, 4096),
            entry(u64::MAX - 10, 4096),
            entry(0, u32::MAX),
        ] {
            let e = b
                .attach_backing(1, vec![entry(0, 4096), bad], &mem)
                .unwrap_err();
            assert!(matches!(e, BackendError::BadBacking { .. }), "{e}");
            assert_eq!(e.response_type(), RESP_ERR_INVALID_PARAMETER);
        }
        // Three entries would pass the cap.
        let three = vec![entry(0, 1024), entry(0x2000, 1024), entry(0x4000, 2048)];
        assert_eq!(
            code(b.attach_backing(1, three, &mem)),
            RESP_ERR_OUT_OF_MEMORY
        );
        b.attach_backing(1, vec![entry(0, 2048), entry(0x4000, 2048)], &mem)
            .unwrap();
        assert_eq!(b.usage().host_bytes, 4096 + 48);
        assert_eq!(
            code(b.attach_backing(1, vec![entry(0, 1)], &mem)),
            RESP_ERR_UNSPEC
        );
        b.detach_backing(1).unwrap();
        assert_eq!(b.usage().host_bytes, 4096);
        assert_eq!(code(b.detach_backing(1)), RESP_ERR_UNSPEC);
        assert_eq!(code(b.detach_backing(2)), RESP_ERR_INVALID_RESOURCE_ID);
        b.attach_backing(1, vec![entry(0, 4096)], &mem).unwrap();
        b.unref(1).unwrap();
        assert_eq!(b.usage(), BackendUsage::default());
    }

    /// Guest pages at 0x1000.. in reverse order, filled with a pattern.
    fn scattered(mem: &GuestMemory, pages: usize) -> (Vec<MemEntry>, Vec<u8>) {
        let linear: Vec<u8> = (0..pages * 4096)
            .map(|i| (i * 7 + i / 4096) as u8)
            .collect();
        let mut entries = Vec::new();
        for p in 0..pages {
            let addr = 0x1000 + ((pages - 1 - p) * 4096) as u64;
            mem.write_slice(&linear[p * 4096..(p + 1) * 4096], GuestAddress(addr))
                .unwrap();
            entries.push(entry(addr, 4096));
        }
        (entries, linear)
    }

    #[test]
    fn transfers_whole_and_partial_rectangles_across_pages() {
        let mem = mem();
        let mut b = Backend2d::new(1 << 24);
        // 100 pixels = 400 bytes a row, 41 rows: 16400 bytes over 5 pages.
        let (w, h) = (100u32, 41u32);
        let (entries, linear) = scattered(&mem, 5);
        b.create_2d(5, FORMAT_B8G8R8X8_UNORM, w, h).unwrap();
        b.attach_backing(5, entries, &mem).unwrap();
        let n = b
            .transfer_to_host_2d(5, Rect::new(0, 0, w, h), 0, &mem)
            .unwrap();
        assert_eq!(n, 16400);
        assert_eq!(b.view(5).unwrap().data, &linear[..16400]);

        // A partial rectangle on a fresh resource: only it is copied, from
        // offset + row * stride.
        b.create_2d(6, FORMAT_B8G8R8X8_UNORM, w, h).unwrap();
        let (entries, linear) = scattered(&mem, 5);
        b.attach_backing(6, entries, &mem).unwrap();
        let r = Rect::new(3, 7, 50, 20);
        let offset = 7 * 400 + 3 * 4;
        assert_eq!(
            b.transfer_to_host_2d(6, r, offset, &mem).unwrap(),
            50 * 4 * 20
        );
        let v = b.view(6).unwrap();
        assert_eq!(v.stride, 400);
        for y in 0..h as usize {
            for x in 0..w as usize {
                let i = y * 400 + x * 4;
                let inside = (3..53).contains(&x) && (7..27).contains(&y);
                let want = if inside {
                    &linear[i..i + 4]
                } else {
                    &[0u8; 4][..]
                };
                assert_eq!(&v.data[i..i + 4], want, "pixel {x},{y}");
            }
        }
        // Empty rectangles copy nothing.
        assert_eq!(
            b.transfer_to_host_2d(6, Rect::new(100, 41, 0, 0), 0, &mem)
                .unwrap(),
            0
        );
    }

    #[test]
    fn transfer_errors() {
        let mem = mem();
        let mut b = Backend2d::new(1 << 24);
        b.create_2d(1, FORMAT_B8G8R8X8_UNORM, 64, 64).unwrap();
        let full = Rect::new(0, 0, 64, 64);
        let code = |r: Result<u64, BackendError>| r.unwrap_err().response_type();
        assert_eq!(
            code(b.transfer_to_host_2d(1, full, 0, &mem)),
            RESP_ERR_UNSPEC
        );
        assert_eq!(
            code(b.transfer_to_host_2d(2, full, 0, &mem)),
            RESP_ERR_INVALID_RESOURCE_ID
        );
        b.attach_backing(1, vec![entry(0x1000, 64 * 64 * 4)], &mem)
            .unwrap();
        b.transfer_to_host_2d(1, full, 0, &mem).unwrap();
        for r in [
            Rect::new(0, 0, 65, 64),
            Rect::new(0, 1, 64, 64),
            Rect::new(64, 0, 1, 1),
            Rect::new(u32::MAX, 0, 2, 1),
            Rect::new(0, u32::MAX, 1, 2),
            Rect::new(1, 1, u32::MAX, u32::MAX),
        ] {
            let e = b.transfer_to_host_2d(1, r, 0, &mem).unwrap_err();
            assert!(matches!(e, BackendError::OutsideResource { .. }), "{r:?}");
            assert_eq!(e.response_type(), RESP_ERR_INVALID_PARAMETER);
        }
        // Reading past the backing: by offset, by overflow, by one byte.
        for offset in [1, 4096, u64::MAX, u64::MAX - 100] {
            let e = b.transfer_to_host_2d(1, full, offset, &mem).unwrap_err();
            assert!(matches!(e, BackendError::OutsideBacking { .. }), "{offset}");
            assert_eq!(e.response_type(), RESP_ERR_INVALID_PARAMETER);
        }
        b.transfer_to_host_2d(1, Rect::new(0, 0, 64, 63), 256, &mem)
            .unwrap();
    }

    #[test]
    fn large_buffers_are_page_aligned() {
        for bytes in [ALIGN_MIN as u64, 8 << 20, (8 << 20) + 4] {
            let b = PixelBuf::zeroed(bytes).unwrap();
            assert_eq!(b.as_slice().as_ptr() as usize % PAGE, 0);
            assert_eq!(b.len(), bytes as usize);
            assert!(b.as_slice().iter().all(|&v| v == 0));
        }
        let small = PixelBuf::zeroed(64).unwrap();
        assert_eq!(small.buf.len(), 64);
        assert!(PixelBuf::zeroed(u64::MAX).is_none());
    }

    #[test]
    fn adjacent_runs_are_merged() {
        let b = Backing::new(vec![
            entry(0x1000, 4096),
            entry(0x2000, 4096),
            entry(0x5000, 0),
            entry(0x3000, 100),
            entry(0x8000, 4096),
            entry(0x7000, 4096),
            entry(u64::MAX - 1, 1),
            entry(u64::MAX, 1),
        ]);
        assert_eq!(
            b.entries,
            vec![
                entry(0x1000, 8292),
                entry(0x8000, 4096),
                entry(0x7000, 4096),
                entry(u64::MAX - 1, 2),
            ]
        );
        assert_eq!(b.starts, vec![0, 8292, 12388, 16484]);
        assert_eq!(b.len, 16486);
        let big = Backing::new(vec![entry(0, u32::MAX), entry(u64::from(u32::MAX), 2)]);
        assert_eq!(big.entries.len(), 2);
    }

    /// Regression: the runs kept the capacity of every entry the guest
    /// sent, so 16384 entries merging into one run held 256 KiB of host
    /// memory while 24 bytes were charged against `max_hostmem`.
    #[test]
    fn merged_backing_holds_only_what_is_charged() {
        let contiguous: Vec<MemEntry> = (0..16384).map(|i| entry(i * 16, 16)).collect();
        let empty: Vec<MemEntry> = (0..16384).map(|i| entry(i, 0)).collect();
        for (entries, runs) in [(contiguous, 1), (empty, 0)] {
            let b = Backing::new(entries);
            assert_eq!(b.entries.len(), runs);
            assert_eq!(b.entries.capacity(), runs);
            assert_eq!(b.starts.capacity(), runs);
        }
    }

    #[test]
    fn locate_agrees_with_a_search_for_any_hint() {
        let b = Backing::new((0..20).map(|i| entry(i * 0x2000, 100 + i as u32)).collect());
        for offset in 0..b.len + 3 {
            let want = b.starts.partition_point(|&s| s <= offset) - 1;
            for hint in 0..25 {
                assert_eq!(b.locate(offset, hint), Some(want), "{offset} from {hint}");
            }
        }
    }

    #[test]
    fn backing_read_skips_empty_runs() {
        let mem = mem();
        mem.write_slice(&[1, 2, 3, 4], GuestAddress(0x1000))
            .unwrap();
        mem.write_slice(&[5, 6, 7, 8], GuestAddress(0x3000))
            .unwrap();
        let backing = Backing::new(vec![
            entry(0x1000, 2),
            entry(0x9000, 0),
            entry(0x1002, 2),
            entry(0x3000, 4),
        ]);
        let mut out = [0u8; 6];
        backing.read(&mem, 1, &mut out, &mut 0).unwrap();
        assert_eq!(out, [2, 3, 4, 5, 6, 7]);
        let mut out = [0u8; 4];
        backing.read(&mem, 4, &mut out, &mut 3).unwrap();
        assert_eq!(out, [5, 6, 7, 8]);
        let mut out = [0u8; 2];
        assert!(backing.read(&mem, 7, &mut out, &mut 0).is_err());
    }
}
