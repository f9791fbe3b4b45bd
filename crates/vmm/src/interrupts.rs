//! Interrupt lines: GSIs with irqfds, and MSI routes for MSI-X vectors.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use pv_devices::pci::msix::MsiRouter;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::arch::x86_64::layout::MSI_GSI_START;
use crate::hypervisor::Vm;

/// Most GSIs KVM's routing table holds on x86.
const MAX_GSI: u32 = 1024;

/// Hands out MSI lines on a VM.
pub struct VmMsiRouter {
    vm: Arc<dyn Vm>,
    next_gsi: AtomicU32,
}

impl VmMsiRouter {
    pub fn new(vm: Arc<dyn Vm>) -> Self {
        Self {
            vm,
            next_gsi: AtomicU32::new(MSI_GSI_START),
        }
    }
}

fn to_io(e: crate::hypervisor::HypervisorError) -> io::Error {
    io::Error::other(e)
}

impl MsiRouter for VmMsiRouter {
    fn allocate(&self) -> io::Result<(u32, EventFd)> {
        let gsi = self.next_gsi.fetch_add(1, Ordering::SeqCst);
        if gsi >= MAX_GSI {
            return Err(io::Error::other("out of interrupt lines"));
        }
        let fd = EventFd::new(EFD_NONBLOCK)?;
        self.vm.register_irqfd(&fd, gsi).map_err(to_io)?;
        Ok((gsi, fd))
    }

    fn set_route(&self, gsi: u32, msg: Option<(u64, u32)>) -> io::Result<()> {
        self.vm.set_msi_route(gsi, msg).map_err(to_io)
    }
}

/// An irqfd on a legacy (IOAPIC) interrupt line.
pub fn legacy_irq(vm: &dyn Vm, gsi: u32) -> io::Result<EventFd> {
    let fd = EventFd::new(EFD_NONBLOCK)?;
    vm.register_irqfd(&fd, gsi).map_err(to_io)?;
    Ok(fd)
}
