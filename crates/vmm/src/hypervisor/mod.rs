//! The seam between the VMM and the host hypervisor.
//!
//! The rest of the VMM sees a [`Vm`] (memory slots, run-time memory
//! mappings, ioeventfds, interrupt routes, vCPU creation) and a [`Vcpu`] (run until an exit that needs the
//! VMM). KVM is the one backend today ([`kvm`]); Hypervisor.framework or
//! aarch64 KVM would implement the same traits. x86 register state is passed
//! as the kvm-bindings structs, used here as plain data.

pub mod kvm;

use std::io;

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_regs, kvm_sregs, CpuId, Msrs};
use vmm_sys_util::eventfd::EventFd;

/// Errors from the hypervisor backend.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    #[error("cannot open {path}")]
    Open {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Unsupported(String),
    #[error("hypervisor call {op} failed")]
    Ioctl {
        op: &'static str,
        #[source]
        source: vmm_sys_util::errno::Error,
    },
}

pub type Result<T> = std::result::Result<T, HypervisorError>;

pub(crate) fn ioctl_err(
    op: &'static str,
) -> impl FnOnce(vmm_sys_util::errno::Error) -> HypervisorError {
    move |source| HypervisorError::Ioctl { op, source }
}

/// Why a vCPU stopped running guest code.
#[derive(Debug)]
pub enum VcpuExit<'a> {
    IoIn(u16, &'a mut [u8]),
    IoOut(u16, &'a [u8]),
    MmioRead(u64, &'a mut [u8]),
    MmioWrite(u64, &'a [u8]),
    /// The vCPU halted with interrupts off, or the hypervisor gave HLT to us.
    Hlt,
    /// Triple fault or similar: the machine is dead.
    Shutdown,
    /// The guest asked for a reset through a path the hypervisor handles.
    Reset,
    /// The run was interrupted (a signal kicked the thread).
    Interrupted,
    /// Anything the VMM does not handle.
    Unhandled(String),
}

/// One virtual CPU.
pub trait Vcpu: Send {
    /// Runs guest code until the next exit.
    fn run(&mut self) -> Result<VcpuExit<'_>>;
    /// When set, the next [`Vcpu::run`] returns [`VcpuExit::Interrupted`] at once.
    fn set_immediate_exit(&mut self, exit: bool);
    fn set_cpuid(&self, cpuid: &CpuId) -> Result<()>;
    fn set_regs(&self, regs: &kvm_regs) -> Result<()>;
    fn get_sregs(&self) -> Result<kvm_sregs>;
    fn set_sregs(&self, sregs: &kvm_sregs) -> Result<()>;
    fn set_fpu(&self, fpu: &kvm_fpu) -> Result<()>;
    /// Sets MSRs; returns how many were set.
    fn set_msrs(&self, msrs: &Msrs) -> Result<usize>;
    fn get_lapic(&self) -> Result<kvm_lapic_state>;
    fn set_lapic(&self, lapic: &kvm_lapic_state) -> Result<()>;
}

/// Where an ioeventfd listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoEventAddress {
    Pio(u64),
    Mmio(u64),
}

/// One virtual machine.
pub trait Vm: Send + Sync {
    /// Maps host memory at `host_addr` into the guest at `guest_addr`.
    ///
    /// # Safety
    /// The host range must stay mapped and valid for as long as the VM exists.
    unsafe fn map_memory(
        &self,
        slot: u32,
        guest_addr: u64,
        size: u64,
        host_addr: u64,
        readonly: bool,
    ) -> Result<()>;
    /// How many memory slots the VM has (RAM and run-time mappings together).
    fn memory_slot_limit(&self) -> u32;
    /// Whether memory can be mapped read-only for the guest (its writes then
    /// exit as MMIO).
    fn supports_readonly_memory(&self) -> bool;
    /// Maps `size` bytes of host memory at `host_addr` into the guest at
    /// `guest_addr` in memory slot `slot`, while the VM runs (e.g. a device's
    /// shared memory). `guest_addr`, `size` and `host_addr` are page aligned;
    /// the slot is unused and the guest range overlaps no other slot.
    ///
    /// # Safety
    /// The host range must be a valid mapping of this process (writable
    /// unless `readonly`) and stay mapped until [`Vm::unmap_user_memory`] of
    /// `slot` returned `Ok` (or the VM is gone).
    unsafe fn map_user_memory(
        &self,
        slot: u32,
        guest_addr: u64,
        size: u64,
        host_addr: *mut u8,
        readonly: bool,
    ) -> Result<()>;
    /// Removes the mapping in `slot` (made at `guest_addr`, `size` bytes by
    /// [`Vm::map_user_memory`]). When it returns `Ok` no vCPU can reach the
    /// host memory any more; guest accesses there exit as MMIO.
    fn unmap_user_memory(&self, slot: u32, guest_addr: u64, size: u64) -> Result<()>;
    fn create_vcpu(&self, id: u8) -> Result<Box<dyn Vcpu>>;
    /// Signals `fd` when the guest writes to `addr` (any value).
    fn register_ioevent(&self, fd: &EventFd, addr: IoEventAddress) -> Result<()>;
    /// Injects interrupt line `gsi` when `fd` is signalled.
    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<()>;
    /// Sets (or with `None` removes) the MSI message that line `gsi` delivers.
    fn set_msi_route(&self, gsi: u32, msg: Option<(u64, u32)>) -> Result<()>;
    /// The guest's clock (kvmclock) in nanoseconds.
    fn get_clock(&self) -> Result<u64>;
    /// Sets the guest's clock, e.g. back to where a pause stopped it.
    fn set_clock(&self, ns: u64) -> Result<()>;
    /// The host's CPUID the guest may see (before per-vCPU fix-ups).
    fn supported_cpuid(&self) -> Result<CpuId>;
}
