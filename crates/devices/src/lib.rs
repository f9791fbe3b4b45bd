//! PearVisor's emulated devices.
//!
//! Everything a guest can touch lives here: the port-I/O and MMIO [`bus`], the
//! [`pci`] segment with its configuration space, the [`virtio`] devices with
//! their PCI transport, and the 16550 [`serial`] port. Devices know nothing
//! about KVM: the VMM hands them guest memory, interrupt triggers and eventfds.

pub mod bus;
pub mod log_limit;
pub mod pci;
pub mod platform;
pub mod serial;
pub mod virtio;

/// Guest memory type used by every device.
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;
