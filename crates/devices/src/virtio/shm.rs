//! Shared memory regions (virtio 1.3 §2.10): host memory a device maps into
//! guest physical address space, e.g. virtio-gpu's host-visible blobs.
//!
//! A device declares its regions ([`SharedMemoryRegion`], through
//! [`super::VirtioDevice::shared_memory_regions`]); the transport lays them
//! out in one BAR ([`ShmLayout`]) and, while the device is active, hands it a
//! [`ShmMapper`] (in [`super::ActivateContext::shm`]) that maps host memory
//! at an offset of a region. Every number a mapping request carries may come
//! from a hostile guest, so [`ShmMappings`] checks it against the layout
//! (region, page alignment, bounds, overlap, a count limit) before the
//! hypervisor sees it.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Mappings and regions are made of pages of this size.
pub const SHM_PAGE_SIZE: u64 = 4096;
/// Most regions one device may declare (their capabilities must fit the
/// 256-byte PCI configuration space next to the transport's own).
pub const MAX_SHM_REGIONS: usize = 4;
/// Largest shared-memory BAR (the sum of a device's regions, rounded up to a
/// power of two).
pub const MAX_SHM_BAR_SIZE: u64 = 64 << 30;
/// Most mappings one device may hold at a time (each costs a hypervisor
/// memory slot).
pub const MAX_SHM_MAPPINGS: usize = 1024;

/// A shared memory region a device declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedMemoryRegion {
    /// The region's id (`shmid`), as the driver asks for it; unique per device.
    pub id: u8,
    /// Length in bytes: a power of two, at least [`SHM_PAGE_SIZE`].
    pub len: u64,
}

/// A region placed in the shared-memory BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlacedRegion {
    pub id: u8,
    /// Offset of the region inside the BAR (aligned to its length).
    pub offset: u64,
    pub len: u64,
}

/// Invalid region declarations, reported when the transport is created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShmLayoutError {
    #[error("shared memory region {id}: length {len:#x} is not a power of two of at least 4 KiB")]
    BadLength { id: u8, len: u64 },
    #[error("shared memory region id {0} is declared twice")]
    DuplicateId(u8),
    #[error("{0} shared memory regions declared; at most {MAX_SHM_REGIONS} are supported")]
    TooMany(usize),
    #[error(
        "shared memory regions need a BAR of {0:#x} bytes; at most {MAX_SHM_BAR_SIZE:#x} are supported"
    )]
    TooLarge(u64),
}

/// Where a device's regions lie in its shared-memory BAR: largest first, each
/// at an offset aligned to its own length; the BAR is the next power of two
/// of their sum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShmLayout {
    regions: Vec<PlacedRegion>,
    bar_size: u64,
}

impl ShmLayout {
    /// Validates and places `regions`; `None` when there are none.
    pub fn new(regions: &[SharedMemoryRegion]) -> Result<Option<Self>, ShmLayoutError> {
        if regions.is_empty() {
            return Ok(None);
        }
        if regions.len() > MAX_SHM_REGIONS {
            return Err(ShmLayoutError::TooMany(regions.len()));
        }
        for (i, r) in regions.iter().enumerate() {
            if !r.len.is_power_of_two() || r.len < SHM_PAGE_SIZE {
                return Err(ShmLayoutError::BadLength {
                    id: r.id,
                    len: r.len,
                });
            }
            if r.len > MAX_SHM_BAR_SIZE {
                return Err(ShmLayoutError::TooLarge(r.len));
            }
            if regions[..i].iter().any(|o| o.id == r.id) {
                return Err(ShmLayoutError::DuplicateId(r.id));
            }
        }
        let mut sorted = regions.to_vec();
        // Descending powers of two: each offset is a multiple of the length.
        sorted.sort_by(|a, b| b.len.cmp(&a.len).then(a.id.cmp(&b.id)));
        let mut offset = 0u64;
        let mut placed = Vec::with_capacity(sorted.len());
        for r in sorted {
            placed.push(PlacedRegion {
                id: r.id,
                offset,
                len: r.len,
            });
            // At most 4 regions of at most 2^36 bytes: no overflow.
            offset += r.len;
        }
        let bar_size = offset.next_power_of_two();
        if bar_size > MAX_SHM_BAR_SIZE {
            return Err(ShmLayoutError::TooLarge(bar_size));
        }
        Ok(Some(Self {
            regions: placed,
            bar_size,
        }))
    }

    /// Size of the BAR (a power of two).
    pub fn bar_size(&self) -> u64 {
        self.bar_size
    }

    /// The regions, in BAR order.
    pub fn regions(&self) -> &[PlacedRegion] {
        &self.regions
    }

    /// Region `id`, if declared.
    pub fn region(&self, id: u8) -> Option<&PlacedRegion> {
        self.regions.iter().find(|r| r.id == id)
    }

    /// Checks `len` bytes at `offset` of region `region` (page aligned, not
    /// empty, inside the region) and returns their offset inside the BAR.
    pub fn resolve(&self, region: u8, offset: u64, len: u64) -> Result<u64, ShmError> {
        let r = self.region(region).ok_or(ShmError::UnknownRegion(region))?;
        if len == 0 {
            return Err(ShmError::Empty { region, offset });
        }
        for (what, value) in [("offset", offset), ("length", len)] {
            if !value.is_multiple_of(SHM_PAGE_SIZE) {
                return Err(ShmError::Unaligned { what, value });
            }
        }
        match offset.checked_add(len) {
            Some(end) if end <= r.len => Ok(r.offset + offset),
            _ => Err(ShmError::OutOfBounds {
                region,
                offset,
                len,
                region_len: r.len,
            }),
        }
    }
}

/// Why a mapping request failed.
#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    #[error("no shared memory region {0}")]
    UnknownRegion(u8),
    #[error("empty mapping at offset {offset:#x} of region {region}")]
    Empty { region: u8, offset: u64 },
    #[error("mapping {what} {value:#x} is not a multiple of the 4 KiB page size")]
    Unaligned { what: &'static str, value: u64 },
    #[error(
        "mapping of {len:#x} bytes at {offset:#x} lies outside region {region} ({region_len:#x} bytes)"
    )]
    OutOfBounds {
        region: u8,
        offset: u64,
        len: u64,
        region_len: u64,
    },
    #[error(
        "mapping of {len:#x} bytes at {offset:#x} of region {region} overlaps an existing one"
    )]
    Overlap { region: u8, offset: u64, len: u64 },
    #[error("too many shared memory mappings (at most {0})")]
    TooManyMappings(usize),
    #[error("nothing is mapped at offset {offset:#x} of region {region}")]
    NotMapped { region: u8, offset: u64 },
    #[error("the device was reset: its shared memory mappings are gone")]
    Closed,
    #[error("the hypervisor could not change the mapping")]
    Hypervisor(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Maps host memory into a device's shared memory regions, as the guest sees
/// them. Given to an active device in [`super::ActivateContext::shm`].
///
/// A mapping is named by its region and its offset there; it covers
/// `len` bytes and may not overlap another. Offsets and lengths are multiples
/// of [`SHM_PAGE_SIZE`]. Once [`ShmMapper::unmap`] returns `Ok`, no vCPU can
/// reach the host memory any more, so the caller may free it.
pub trait ShmMapper: Send + Sync {
    /// Maps `len` bytes of host memory at `host_addr` (page aligned) at
    /// `offset` of region `region`, read-only for the guest unless `writable`.
    ///
    /// # Safety
    /// `host_addr..host_addr + len` must be a valid mapping of this process
    /// (readable, and writable if `writable`) and stay mapped, with the same
    /// memory behind it, until [`ShmMapper::unmap`] of this mapping returned
    /// `Ok`, or until the device was reset or dropped (the transport removes
    /// every mapping before it calls [`super::VirtioDevice::reset`] and
    /// before the device is dropped). The guest reads and writes it at any
    /// time in between.
    unsafe fn map(
        &self,
        region: u8,
        offset: u64,
        host_addr: *mut u8,
        len: u64,
        writable: bool,
    ) -> Result<(), ShmError>;

    /// Removes the mapping that starts at `offset` of region `region`.
    fn unmap(&self, region: u8, offset: u64) -> Result<(), ShmError>;
}

/// One mapping in a [`ShmMappings`] table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShmMapping<T> {
    pub region: u8,
    /// Offset inside the region.
    pub offset: u64,
    /// Offset inside the BAR.
    pub bar_offset: u64,
    pub len: u64,
    /// What the owner keeps with it (a memory slot, for one).
    pub value: T,
}

/// The mappings of one device, checked against its layout: what a
/// [`ShmMapper`] implementation keeps.
#[derive(Debug)]
pub struct ShmMappings<T> {
    layout: ShmLayout,
    limit: usize,
    /// Keyed by (region, offset inside the region).
    map: BTreeMap<(u8, u64), ShmMapping<T>>,
}

impl<T> ShmMappings<T> {
    /// An empty table for `layout` holding at most `limit` mappings.
    pub fn new(layout: ShmLayout, limit: usize) -> Self {
        Self {
            layout,
            limit,
            map: BTreeMap::new(),
        }
    }

    pub fn layout(&self) -> &ShmLayout {
        &self.layout
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Checks that a new mapping of `len` bytes at `offset` of `region` fits
    /// (see [`ShmLayout::resolve`]), overlaps none and stays within the
    /// limit; returns its offset inside the BAR.
    pub fn check(&self, region: u8, offset: u64, len: u64) -> Result<u64, ShmError> {
        let bar_offset = self.layout.resolve(region, offset, len)?;
        // Mappings do not overlap each other, so only the last one starting
        // before the new one's end can reach into it.
        let end = offset + len;
        if let Some(prev) = self.map.range((region, 0)..(region, end)).next_back() {
            if prev.1.offset + prev.1.len > offset {
                return Err(ShmError::Overlap {
                    region,
                    offset,
                    len,
                });
            }
        }
        if self.map.len() >= self.limit {
            return Err(ShmError::TooManyMappings(self.limit));
        }
        Ok(bar_offset)
    }

    /// Records a mapping after [`ShmMappings::check`]; checks again.
    pub fn insert(
        &mut self,
        region: u8,
        offset: u64,
        len: u64,
        value: T,
    ) -> Result<&ShmMapping<T>, ShmError> {
        let bar_offset = self.check(region, offset, len)?;
        Ok(self.map.entry((region, offset)).or_insert(ShmMapping {
            region,
            offset,
            bar_offset,
            len,
            value,
        }))
    }

    /// The mapping that starts at `offset` of `region`.
    pub fn get(&self, region: u8, offset: u64) -> Result<&ShmMapping<T>, ShmError> {
        self.map
            .get(&(region, offset))
            .ok_or(ShmError::NotMapped { region, offset })
    }

    /// Forgets the mapping that starts at `offset` of `region`.
    pub fn remove(&mut self, region: u8, offset: u64) -> Result<ShmMapping<T>, ShmError> {
        self.map
            .remove(&(region, offset))
            .ok_or(ShmError::NotMapped { region, offset })
    }

    /// Forgets every mapping, returning them.
    pub fn drain(&mut self) -> Vec<ShmMapping<T>> {
        std::mem::take(&mut self.map).into_values().collect()
    }
}

/// The mapper an active device gets from the transport: checks every
/// request (see [`ShmMappings::check`]) before the VMM's mapper sees it and
/// remembers what is mapped, so that a reset removes it all. Closed at
/// reset: further maps fail with [`ShmError::Closed`], unmaps succeed.
pub(crate) struct DeviceShm {
    backend: std::sync::Arc<dyn ShmMapper>,
    state: Mutex<DeviceShmState>,
}

struct DeviceShmState {
    mappings: ShmMappings<()>,
    closed: bool,
}

impl DeviceShm {
    pub(crate) fn new(layout: ShmLayout, backend: std::sync::Arc<dyn ShmMapper>) -> Self {
        Self {
            backend,
            state: Mutex::new(DeviceShmState {
                mappings: ShmMappings::new(layout, MAX_SHM_MAPPINGS),
                closed: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DeviceShmState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes every mapping and refuses new ones.
    pub(crate) fn close(&self) {
        let mut s = self.lock();
        s.closed = true;
        for m in s.mappings.drain() {
            if let Err(e) = self.backend.unmap(m.region, m.offset) {
                log::error!(
                    "cannot unmap shared memory at {:#x} of region {}: {e}",
                    m.offset,
                    m.region
                );
            }
        }
    }
}

impl ShmMapper for DeviceShm {
    unsafe fn map(
        &self,
        region: u8,
        offset: u64,
        host_addr: *mut u8,
        len: u64,
        writable: bool,
    ) -> Result<(), ShmError> {
        // The lock is held across the backend call, so a reset cannot slip
        // between mapping and recording.
        let mut s = self.lock();
        if s.closed {
            return Err(ShmError::Closed);
        }
        s.mappings.check(region, offset, len)?;
        // SAFETY: the caller's guarantee for `host_addr..+len` is passed on
        // unchanged; the request was checked against the layout above.
        unsafe { self.backend.map(region, offset, host_addr, len, writable) }?;
        s.mappings.insert(region, offset, len, ())?;
        Ok(())
    }

    fn unmap(&self, region: u8, offset: u64) -> Result<(), ShmError> {
        let mut s = self.lock();
        if s.closed {
            return Ok(());
        }
        s.mappings.get(region, offset)?;
        self.backend.unmap(region, offset)?;
        s.mappings.remove(region, offset)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K4: u64 = 4096;

    fn region(id: u8, len: u64) -> SharedMemoryRegion {
        SharedMemoryRegion { id, len }
    }

    #[test]
    fn layout_places_largest_first_aligned_and_rounds_the_bar_up() {
        assert_eq!(ShmLayout::new(&[]), Ok(None));
        let l = ShmLayout::new(&[region(1, K4), region(7, 1 << 20), region(3, 2 * K4)])
            .unwrap()
            .unwrap();
        let placed: Vec<_> = l
            .regions()
            .iter()
            .map(|r| (r.id, r.offset, r.len))
            .collect();
        assert_eq!(
            placed,
            vec![
                (7, 0, 1 << 20),
                (3, 1 << 20, 2 * K4),
                (1, (1 << 20) + 2 * K4, K4)
            ]
        );
        for r in l.regions() {
            assert_eq!(r.offset % r.len, 0, "region {} aligned", r.id);
        }
        assert_eq!(l.bar_size(), 2 << 20);
        let one = ShmLayout::new(&[region(1, 16 << 30)]).unwrap().unwrap();
        assert_eq!(one.bar_size(), 16 << 30);
    }

    #[test]
    fn layout_rejects_bad_declarations() {
        for len in [0, 1, 2048, 3 * K4, (1 << 20) + K4, u64::MAX] {
            assert_eq!(
                ShmLayout::new(&[region(2, len)]),
                Err(ShmLayoutError::BadLength { id: 2, len })
            );
        }
        assert_eq!(
            ShmLayout::new(&[region(1, K4), region(1, K4)]),
            Err(ShmLayoutError::DuplicateId(1))
        );
        let five: Vec<_> = (0..5).map(|i| region(i, K4)).collect();
        assert_eq!(ShmLayout::new(&five), Err(ShmLayoutError::TooMany(5)));
        assert_eq!(
            ShmLayout::new(&[region(1, 128 << 30)]),
            Err(ShmLayoutError::TooLarge(128 << 30))
        );
        assert_eq!(
            ShmLayout::new(&[region(1, 64 << 30), region(2, K4)]),
            Err(ShmLayoutError::TooLarge(128 << 30))
        );
        let largest = ShmLayout::new(&[region(1, 64 << 30)]).unwrap().unwrap();
        assert_eq!(largest.bar_size(), MAX_SHM_BAR_SIZE);
        assert!(ShmLayoutError::BadLength { id: 2, len: 3 }
            .to_string()
            .contains("power of two"));
    }

    #[test]
    fn mappings_are_bounded_aligned_and_disjoint() {
        let layout = ShmLayout::new(&[region(1, 1 << 20), region(2, 64 * K4)])
            .unwrap()
            .unwrap();
        let mut m = ShmMappings::new(layout, 3);
        let e = |r: Result<_, ShmError>| r.map(|_| ()).unwrap_err();
        assert!(matches!(e(m.check(9, 0, K4)), ShmError::UnknownRegion(9)));
        assert!(matches!(e(m.check(1, 0, 0)), ShmError::Empty { .. }));
        assert!(matches!(
            e(m.check(1, 100, K4)),
            ShmError::Unaligned {
                what: "offset",
                value: 100
            }
        ));
        assert!(matches!(
            e(m.check(1, 0, K4 + 1)),
            ShmError::Unaligned { what: "length", .. }
        ));
        assert!(matches!(
            e(m.check(1, 1 << 20, K4)),
            ShmError::OutOfBounds { .. }
        ));
        assert!(matches!(
            e(m.check(2, 0, 65 * K4)),
            ShmError::OutOfBounds { .. }
        ));
        // offset + len overflows u64.
        assert!(matches!(
            e(m.check(1, u64::MAX - K4 + 1, 2 * K4)),
            ShmError::OutOfBounds { .. }
        ));
        // Region 2 lies after region 1 in the BAR.
        assert_eq!(m.check(2, K4, K4).unwrap(), (1 << 20) + K4);
        m.insert(1, 4 * K4, 4 * K4, 'a').unwrap();
        for (off, len) in [(4 * K4, K4), (7 * K4, K4), (0, 5 * K4), (0, 64 * K4)] {
            assert!(
                matches!(e(m.check(1, off, len)), ShmError::Overlap { .. }),
                "{off:#x}+{len:#x}"
            );
        }
        // Touching is fine, and the same offset in another region is another mapping.
        m.insert(1, 0, 4 * K4, 'b').unwrap();
        m.insert(2, 4 * K4, K4, 'c').unwrap();
        assert!(matches!(
            e(m.check(1, 8 * K4, K4)),
            ShmError::TooManyMappings(3)
        ));
        assert_eq!(m.get(2, 4 * K4).unwrap().bar_offset, (1 << 20) + 4 * K4);
        assert!(matches!(
            m.remove(1, K4).unwrap_err(),
            ShmError::NotMapped { region: 1, .. }
        ));
        assert_eq!(m.remove(1, 0).unwrap().value, 'b');
        m.insert(1, 8 * K4, K4, 'd').unwrap();
        let mut all: Vec<_> = m.drain().into_iter().map(|x| x.value).collect();
        all.sort();
        assert_eq!(all, vec!['a', 'c', 'd']);
        assert!(m.is_empty());
    }

    /// Random requests, guest-sized numbers included, against a plain model:
    /// a request is taken exactly when it names a region, is page aligned,
    /// not empty, inside the region, disjoint from every live mapping and
    /// under the limit.
    #[test]
    fn random_requests_match_a_model() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let layout = ShmLayout::new(&[region(1, 64 * K4), region(3, 16 * K4)])
            .unwrap()
            .unwrap();
        let mut m = ShmMappings::new(layout, 12);
        // (region, offset, len) of live mappings.
        let mut live: Vec<(u8, u64, u64)> = Vec::new();
        for step in 0..20_000 {
            let region = [0u8, 1, 1, 1, 3, 3, 255][(next() % 7) as usize];
            let pick = |r: u64, huge: u64| match r % 8 {
                0 => huge,
                1 => huge % (1 << 20),
                _ => (r % 20) * K4,
            };
            let offset = pick(next(), next());
            let len = pick(next(), next());
            if next() % 3 == 0 && !live.is_empty() {
                let i = (next() % live.len() as u64) as usize;
                let (r, o, _) = live.swap_remove(i);
                m.remove(r, o).unwrap();
                continue;
            }
            let region_len = match region {
                1 => Some(64 * K4),
                3 => Some(16 * K4),
                _ => None,
            };
            let ok = region_len.is_some_and(|rl| {
                len != 0
                    && offset % K4 == 0
                    && len % K4 == 0
                    && offset.checked_add(len).is_some_and(|end| end <= rl)
                    && live
                        .iter()
                        .all(|&(r, o, l)| r != region || o + l <= offset || offset + len <= o)
                    && live.len() < 12
            });
            let got = m.insert(region, offset, len, ());
            assert_eq!(
                got.is_ok(),
                ok,
                "step {step}: {region} {offset:#x}+{len:#x}: {:?}",
                got.err()
            );
            if ok {
                live.push((region, offset, len));
            }
            assert_eq!(m.len(), live.len());
        }
    }
}
