//! PearVisor's VMM core.
//!
//! - [`hypervisor`]: the small seam over the host hypervisor (KVM today).
//! - [`arch`]: x86_64 specifics: memory layout, boot protocols, CPUID, ACPI.
//! - [`memory`]: guest RAM.
//! - [`config`]: the VM configuration shared by CLI, JSON file and API.
//! - [`control`]: the lifecycle state machine the control plane drives.
//! - [`interrupts`]: irqfd lines and MSI routes.
//! - [`shm`]: device shared memory mapped into the guest as memory slots.
//! - [`vm`]: builds a machine from a [`config::VmConfig`] and runs it.

pub mod arch;
pub mod config;
pub mod control;
pub mod hypervisor;
pub mod interrupts;
pub mod memory;
pub mod shm;
pub mod vm;
