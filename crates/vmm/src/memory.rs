//! Guest RAM: anonymous host mappings laid out around the 32-bit MMIO hole.

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::arch::x86_64::layout::{MMIO32_HOLE_START, RAM_64BIT_START};

/// The guest memory type used throughout the VMM.
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;

/// Smallest guest RAM accepted: enough for a kernel and an initramfs.
pub const MIN_MEMORY: u64 = 64 << 20;

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("guest memory of {0} bytes is too small: give at least 64M")]
    TooSmall(u64),
    #[error("guest memory of {size} bytes is more than the host's {host} bytes of RAM")]
    TooLarge { size: u64, host: u64 },
    #[error("guest memory size {0} is not a multiple of 4 KiB")]
    Unaligned(u64),
    #[error("cannot map guest memory")]
    Mmap(#[source] vm_memory::mmap::FromRangesError),
}

/// The RAM ranges for `size` bytes: below the 32-bit hole, then above 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, usize)> {
    let low = size.min(MMIO32_HOLE_START);
    let mut ranges = vec![(GuestAddress(0), low as usize)];
    if size > low {
        ranges.push((GuestAddress(RAM_64BIT_START), (size - low) as usize));
    }
    ranges
}

/// Total RAM of the host, in bytes.
pub fn host_memory() -> u64 {
    // SAFETY: sysinfo only writes into the struct we pass.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable sysinfo struct.
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return u64::MAX;
    }
    (info.totalram as u64).saturating_mul(u64::from(info.mem_unit))
}

/// Checks a requested guest memory size against the limits and the host.
pub fn validate_size(size: u64) -> Result<(), MemoryError> {
    if size < MIN_MEMORY {
        return Err(MemoryError::TooSmall(size));
    }
    if !size.is_multiple_of(4096) {
        return Err(MemoryError::Unaligned(size));
    }
    let host = host_memory();
    if size > host {
        return Err(MemoryError::TooLarge { size, host });
    }
    Ok(())
}

/// Maps `size` bytes of guest RAM (not validated against the host) and asks
/// for transparent huge pages: with 2 MiB host pages the guest takes 512
/// times fewer second-level page faults while it first touches its memory
/// (the kernel decompressing itself, for one), and the TLB covers more.
pub fn create_guest_memory(size: u64) -> Result<GuestMemory, MemoryError> {
    let mem = GuestMemory::from_ranges(&ram_ranges(size)).map_err(MemoryError::Mmap)?;
    for region in mem.iter() {
        let Ok(host) = region.get_host_address(vm_memory::MemoryRegionAddress(0)) else {
            continue;
        };
        // SAFETY: the range is exactly the region's own anonymous mapping;
        // MADV_HUGEPAGE only changes how the kernel backs it.
        let rc = unsafe {
            libc::madvise(
                host.cast::<libc::c_void>(),
                region.len() as usize,
                libc::MADV_HUGEPAGE,
            )
        };
        if rc != 0 {
            log::debug!(
                "guest memory: no transparent huge pages: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(mem)
}

/// Highest guest RAM address + 1.
pub fn ram_top(mem: &GuestMemory) -> u64 {
    mem.iter()
        .map(|r| r.start_addr().0 + r.len())
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_splits_around_the_hole() {
        assert_eq!(ram_ranges(1 << 30), vec![(GuestAddress(0), 1 << 30)]);
        assert_eq!(
            ram_ranges(4 << 30),
            vec![
                (GuestAddress(0), MMIO32_HOLE_START as usize),
                (GuestAddress(RAM_64BIT_START), (1 << 30) as usize)
            ]
        );
    }

    #[test]
    fn sizes_are_validated() {
        assert!(matches!(
            validate_size(1 << 20),
            Err(MemoryError::TooSmall(_))
        ));
        assert!(matches!(
            validate_size((128 << 20) + 1),
            Err(MemoryError::Unaligned(_))
        ));
        assert!(matches!(
            validate_size(1 << 50),
            Err(MemoryError::TooLarge { .. })
        ));
        assert!(validate_size(128 << 20).is_ok());
    }
}
