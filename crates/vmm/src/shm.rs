//! Device shared memory in guest physical address space: each mapping a
//! device makes in its shared-memory BAR becomes one hypervisor memory slot
//! (a KVM user memory region) at `BAR base + region offset + offset`.
//!
//! Slot ids are handed out above the RAM slots by one [`MemorySlots`] per VM
//! and reused once freed; there are never more than the hypervisor allows
//! (`KVM_CAP_NR_MEMSLOTS`). The transport checks every request against the
//! device's layout before it gets here ([`pv_devices::virtio::shm`]); the
//! mapper checks again with the same rules, so it is safe on its own.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};

use pv_devices::virtio::shm::{ShmLayout, ShmMappings, MAX_SHM_MAPPINGS, SHM_PAGE_SIZE};
use pv_devices::virtio::{ShmError, ShmMapper};

use crate::hypervisor::Vm;

/// The memory slot ids of one VM that run-time mappings may use.
#[derive(Debug)]
pub struct MemorySlots {
    first: u32,
    next: u32,
    limit: u32,
    free: BTreeSet<u32>,
}

impl MemorySlots {
    /// Slots `first..limit` (the ones below `first` hold RAM).
    pub fn new(first: u32, limit: u32) -> Self {
        Self {
            first,
            next: first,
            limit,
            free: BTreeSet::new(),
        }
    }

    /// The lowest free slot id.
    pub fn alloc(&mut self) -> Option<u32> {
        if let Some(slot) = self.free.pop_first() {
            return Some(slot);
        }
        (self.next < self.limit).then(|| {
            self.next += 1;
            self.next - 1
        })
    }

    /// Gives `slot` back (ids never handed out are ignored).
    pub fn release(&mut self, slot: u32) {
        if slot < self.first || slot >= self.next {
            return;
        }
        if slot + 1 == self.next {
            self.next = slot;
            // Fold freed ids at the top back into `next`.
            while self.next > self.first && self.free.remove(&(self.next - 1)) {
                self.next -= 1;
            }
        } else {
            self.free.insert(slot);
        }
    }

    /// How many slots are in use.
    pub fn used(&self) -> u32 {
        self.next - self.first - self.free.len() as u32
    }
}

/// A device's [`ShmMapper`] over hypervisor memory slots.
pub struct VmShmMapper {
    vm: Arc<dyn Vm>,
    slots: Arc<Mutex<MemorySlots>>,
    bar: u64,
    mappings: Mutex<ShmMappings<u32>>,
}

fn hypervisor(e: crate::hypervisor::HypervisorError) -> ShmError {
    ShmError::Hypervisor(Box::new(e))
}

impl VmShmMapper {
    /// A mapper for the BAR at guest address `bar` laid out as `layout`,
    /// taking slots from `slots` (shared by every device of the VM).
    pub fn new(
        vm: Arc<dyn Vm>,
        slots: Arc<Mutex<MemorySlots>>,
        bar: u64,
        layout: ShmLayout,
    ) -> Self {
        Self {
            vm,
            slots,
            bar,
            mappings: Mutex::new(ShmMappings::new(layout, MAX_SHM_MAPPINGS)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ShmMappings<u32>> {
        self.mappings.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_slots(&self) -> MutexGuard<'_, MemorySlots> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many mappings are live.
    pub fn mapped(&self) -> usize {
        self.lock().len()
    }

    /// Removes every mapping (errors are logged).
    pub fn unmap_all(&self) {
        let mut mappings = self.lock();
        for m in mappings.drain() {
            let gpa = self.bar + m.bar_offset;
            match self.vm.unmap_user_memory(m.value, gpa, m.len) {
                Ok(()) => self.lock_slots().release(m.value),
                // The slot stays taken: it may still map the memory.
                Err(e) => log::error!("cannot remove shared memory slot {}: {e}", m.value),
            }
        }
    }
}

impl ShmMapper for VmShmMapper {
    unsafe fn map(
        &self,
        region: u8,
        offset: u64,
        host_addr: *mut u8,
        len: u64,
        writable: bool,
    ) -> Result<(), ShmError> {
        let mut mappings = self.lock();
        let bar_offset = mappings.check(region, offset, len)?;
        if !(host_addr as u64).is_multiple_of(SHM_PAGE_SIZE) {
            return Err(ShmError::Unaligned {
                what: "host address",
                value: host_addr as u64,
            });
        }
        if !writable && !self.vm.supports_readonly_memory() {
            return Err(ShmError::Hypervisor(
                "the hypervisor cannot map memory read-only".into(),
            ));
        }
        // Inside the BAR, which the VMM placed in the 64-bit window.
        let gpa = self.bar + bar_offset;
        let slot = self.lock_slots().alloc().ok_or(ShmError::TooManyMappings(
            self.vm.memory_slot_limit() as usize,
        ))?;
        // SAFETY: the caller guarantees the host range stays mapped until
        // `unmap` (or the device's reset, which calls `unmap`), and the slot
        // is deleted there before `unmap` returns.
        let mapped = unsafe {
            self.vm
                .map_user_memory(slot, gpa, len, host_addr, !writable)
        };
        if let Err(e) = mapped {
            self.lock_slots().release(slot);
            return Err(hypervisor(e));
        }
        mappings.insert(region, offset, len, slot)?;
        log::debug!(
            "shared memory: region {region} +{offset:#x} ({len:#x} bytes) at {gpa:#x}, slot {slot}"
        );
        Ok(())
    }

    fn unmap(&self, region: u8, offset: u64) -> Result<(), ShmError> {
        let mut mappings = self.lock();
        let m = *mappings.get(region, offset)?;
        self.vm
            .unmap_user_memory(m.value, self.bar + m.bar_offset, m.len)
            .map_err(hypervisor)?;
        mappings.remove(region, offset)?;
        self.lock_slots().release(m.value);
        Ok(())
    }
}

impl Drop for VmShmMapper {
    fn drop(&mut self) {
        // Normally empty: the transport unmaps at reset and when dropped.
        self.unmap_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::{HypervisorError, IoEventAddress, Result, Vcpu};
    use kvm_bindings::CpuId;
    use pv_devices::virtio::SharedMemoryRegion;
    use vmm_sys_util::eventfd::EventFd;

    /// Records slot changes; fails maps at `fail_gpa`.
    #[derive(Default)]
    struct FakeVm {
        /// (slot, gpa, size, readonly) of live slots.
        slots: Mutex<Vec<(u32, u64, u64, bool)>>,
        fail_gpa: Option<u64>,
        readonly: bool,
    }

    impl Vm for FakeVm {
        unsafe fn map_memory(&self, _: u32, _: u64, _: u64, _: u64, _: bool) -> Result<()> {
            unimplemented!()
        }
        fn memory_slot_limit(&self) -> u32 {
            6
        }
        fn supports_readonly_memory(&self) -> bool {
            self.readonly
        }
        unsafe fn map_user_memory(
            &self,
            slot: u32,
            gpa: u64,
            size: u64,
            _host: *mut u8,
            readonly: bool,
        ) -> Result<()> {
            if Some(gpa) == self.fail_gpa {
                return Err(HypervisorError::Unsupported("test".into()));
            }
            let mut s = self.slots.lock().unwrap();
            assert!(
                s.iter().all(|e| e.0 != slot),
                "slot {slot} reused while live"
            );
            s.push((slot, gpa, size, readonly));
            Ok(())
        }
        fn unmap_user_memory(&self, slot: u32, gpa: u64, size: u64) -> Result<()> {
            let mut s = self.slots.lock().unwrap();
            let i = s.iter().position(|e| e.0 == slot).expect("live slot");
            assert_eq!((s[i].1, s[i].2), (gpa, size));
            s.remove(i);
            Ok(())
        }
        fn create_vcpu(&self, _: u8) -> Result<Box<dyn Vcpu>> {
            unimplemented!()
        }
        fn register_ioevent(&self, _: &EventFd, _: IoEventAddress) -> Result<()> {
            unimplemented!()
        }
        fn register_irqfd(&self, _: &EventFd, _: u32) -> Result<()> {
            unimplemented!()
        }
        fn set_msi_route(&self, _: u32, _: Option<(u64, u32)>) -> Result<()> {
            unimplemented!()
        }
        fn get_clock(&self) -> Result<u64> {
            unimplemented!()
        }
        fn set_clock(&self, _: u64) -> Result<()> {
            unimplemented!()
        }
        fn supported_cpuid(&self) -> Result<CpuId> {
            unimplemented!()
        }
    }

    const BAR: u64 = 0x10_0000_0000;
    const PAGE: *mut u8 = 0x7f00_0000_0000 as *mut u8;

    fn mapper(vm: Arc<FakeVm>) -> VmShmMapper {
        let layout = ShmLayout::new(&[
            SharedMemoryRegion {
                id: 1,
                len: 1 << 20,
            },
            SharedMemoryRegion { id: 2, len: 0x4000 },
        ])
        .unwrap()
        .unwrap();
        let slots = Arc::new(Mutex::new(MemorySlots::new(2, vm.memory_slot_limit())));
        VmShmMapper::new(vm, slots, BAR, layout)
    }

    #[test]
    fn slots_above_ram_are_reused_and_bounded() {
        let mut s = MemorySlots::new(2, 5);
        assert_eq!(
            (s.alloc(), s.alloc(), s.alloc(), s.alloc()),
            (Some(2), Some(3), Some(4), None)
        );
        s.release(3);
        assert_eq!(s.used(), 2);
        assert_eq!(s.alloc(), Some(3));
        s.release(2);
        s.release(4);
        s.release(3);
        assert_eq!(s.used(), 0);
        assert_eq!(s.alloc(), Some(2));
        // Releasing what was never handed out changes nothing.
        s.release(9);
        s.release(0);
        assert_eq!(s.used(), 1);
    }

    #[test]
    fn mappings_become_slots_at_bar_offsets() {
        let vm = Arc::new(FakeVm {
            readonly: true,
            ..Default::default()
        });
        let m = mapper(vm.clone());
        // SAFETY: the fake VM never touches the host memory.
        unsafe {
            m.map(1, 0x2000, PAGE, 0x1000, true).unwrap();
            m.map(2, 0x1000, PAGE, 0x2000, false).unwrap();
        }
        assert_eq!(
            *vm.slots.lock().unwrap(),
            vec![
                (2, BAR + 0x2000, 0x1000, false),
                (3, BAR + (1 << 20) + 0x1000, 0x2000, true)
            ]
        );
        // The same checks as the transport's.
        // SAFETY: as above.
        unsafe {
            assert!(matches!(
                m.map(1, 0x2000, PAGE, 0x1000, true),
                Err(ShmError::Overlap { .. })
            ));
            assert!(matches!(
                m.map(5, 0, PAGE, 0x1000, true),
                Err(ShmError::UnknownRegion(5))
            ));
            assert!(matches!(
                m.map(2, 0, PAGE, 0x8000, true),
                Err(ShmError::OutOfBounds { .. })
            ));
            assert!(matches!(
                m.map(1, 0, PAGE.wrapping_add(8), 0x1000, true),
                Err(ShmError::Unaligned {
                    what: "host address",
                    ..
                })
            ));
        }
        m.unmap(1, 0x2000).unwrap();
        assert!(matches!(
            m.unmap(1, 0x2000),
            Err(ShmError::NotMapped { .. })
        ));
        // The freed slot is the next one used.
        // SAFETY: as above.
        unsafe { m.map(1, 0x8000, PAGE, 0x1000, true) }.unwrap();
        assert_eq!(vm.slots.lock().unwrap()[1].0, 2);
        assert_eq!(m.mapped(), 2);
        drop(m);
        assert!(vm.slots.lock().unwrap().is_empty(), "dropping unmaps");
    }

    #[test]
    fn slot_exhaustion_readonly_and_hypervisor_failures_are_errors() {
        let vm = Arc::new(FakeVm {
            fail_gpa: Some(BAR + 0x10_000),
            ..Default::default()
        });
        let m = mapper(vm.clone());
        // SAFETY: the fake VM never touches the host memory.
        unsafe {
            assert!(matches!(
                m.map(1, 0, PAGE, 0x1000, false),
                Err(ShmError::Hypervisor(_))
            ));
            assert!(matches!(
                m.map(1, 0x10_000, PAGE, 0x1000, true),
                Err(ShmError::Hypervisor(_))
            ));
            // Slots 2..6: four mappings, then none left.
            for i in 0..4 {
                m.map(1, i * 0x1000, PAGE, 0x1000, true).unwrap();
            }
            assert!(matches!(
                m.map(1, 0x20_000, PAGE, 0x1000, true),
                Err(ShmError::TooManyMappings(6))
            ));
        }
        assert_eq!(
            vm.slots.lock().unwrap().len(),
            4,
            "failed maps left no slot"
        );
        m.unmap_all();
        assert!(vm.slots.lock().unwrap().is_empty());
    }
}
