//! KVM backend of the hypervisor seam, over kvm-ioctls.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use kvm_bindings::{
    kvm_fpu, kvm_irq_routing_entry, kvm_lapic_state, kvm_pit_config, kvm_regs, kvm_sregs,
    kvm_userspace_memory_region, CpuId, KvmIrqRouting, Msrs, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
    KVM_MAX_CPUID_ENTRIES, KVM_MEM_READONLY, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, NoDatamatch, VcpuFd, VmFd};
use vmm_sys_util::eventfd::EventFd;

use super::{ioctl_err, HypervisorError, IoEventAddress, Result, Vcpu, VcpuExit, Vm};

/// What kind of virtualization the host's /dev/kvm offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKvm {
    /// KVM on VT-x or AMD-V: stock kernels run at native speed.
    Hardware,
    /// kvm_pvm without hardware virtualization: only paravirtualized (PVM)
    /// guest kernels run; a stock kernel cannot.
    PvmOnly,
    /// No usable /dev/kvm.
    Missing,
}

impl HostKvm {
    /// Inspects /dev/kvm, /sys/module and /proc/cpuinfo.
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Self::classify(
            Path::new("/dev/kvm").exists(),
            |m| Path::new("/sys/module").join(m).exists(),
            &cpuinfo,
        )
    }

    /// Classifies from observations: whether /dev/kvm exists, which modules
    /// are loaded, and /proc/cpuinfo's text.
    pub fn classify(dev_kvm: bool, module_loaded: impl Fn(&str) -> bool, cpuinfo: &str) -> Self {
        if !dev_kvm {
            return HostKvm::Missing;
        }
        let hw_flag = cpuinfo
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
        let hw_module = module_loaded("kvm_intel") || module_loaded("kvm_amd");
        if hw_flag && hw_module {
            HostKvm::Hardware
        } else if module_loaded("kvm_pvm") {
            HostKvm::PvmOnly
        } else {
            HostKvm::Missing
        }
    }

    /// Whether stock Linux guests can run here.
    pub fn can_run_guests(self) -> bool {
        self == HostKvm::Hardware
    }

    /// A sentence for the user.
    pub fn describe(self) -> &'static str {
        match self {
            HostKvm::Hardware => {
                "hardware virtualization: /dev/kvm is backed by kvm_intel/kvm_amd on a CPU with \
                 VMX/SVM, so PearVisor runs guests directly"
            }
            HostKvm::PvmOnly => {
                "/dev/kvm is kvm_pvm without hardware virtualization (no vmx/svm): it runs only \
                 PVM-patched guest kernels, not a stock kernel. Run PearVisor inside the nested \
                 test machine instead (scripts/run.sh and the tests do this: QEMU/TCG with an \
                 emulated AMD SVM CPU), or on a host with VT-x/AMD-V"
            }
            HostKvm::Missing => {
                "no usable /dev/kvm: load kvm_intel or kvm_amd on a host with VT-x/AMD-V, or \
                 use the nested test machine (scripts/run.sh)"
            }
        }
    }
}

impl std::fmt::Display for HostKvm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}

/// An open /dev/kvm.
pub struct KvmHypervisor {
    kvm: Kvm,
}

impl KvmHypervisor {
    pub fn new() -> Result<Self> {
        let kvm = Kvm::new().map_err(|e| HypervisorError::Open {
            path: "/dev/kvm".into(),
            source: e.into(),
        })?;
        if kvm.get_api_version() != 12 {
            return Err(HypervisorError::Unsupported(format!(
                "KVM API version {} (need 12)",
                kvm.get_api_version()
            )));
        }
        Ok(Self { kvm })
    }

    /// Creates a VM. With `irqchip`, KVM emulates the PIC, IOAPIC, local APICs
    /// and PIT in the kernel (what a Linux guest needs).
    pub fn create_vm(&self, irqchip: bool) -> Result<KvmVm> {
        let fd = self.kvm.create_vm().map_err(ioctl_err("KVM_CREATE_VM"))?;
        fd.set_tss_address(0xfffb_d000)
            .map_err(ioctl_err("KVM_SET_TSS_ADDR"))?;
        fd.set_identity_map_address(0xfffb_c000)
            .map_err(ioctl_err("KVM_SET_IDENTITY_MAP_ADDR"))?;
        let mut routes = BTreeMap::new();
        if irqchip {
            fd.create_irq_chip()
                .map_err(ioctl_err("KVM_CREATE_IRQCHIP"))?;
            let pit = kvm_pit_config {
                flags: KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            };
            fd.create_pit2(pit).map_err(ioctl_err("KVM_CREATE_PIT2"))?;
            routes = legacy_routes();
        }
        let supported_cpuid = self
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(ioctl_err("KVM_GET_SUPPORTED_CPUID"))?;
        // Per VM where the kernel answers it (it may differ per VM type),
        // else the system-wide answer; KVM's documented default is 32.
        let slots = match fd.check_extension_int(Cap::NrMemslots) {
            n if n > 0 => n,
            _ => self.kvm.check_extension_int(Cap::NrMemslots),
        };
        let memory_slots = u32::try_from(slots).ok().filter(|&n| n > 0).unwrap_or(32);
        let readonly_memory = fd.check_extension(Cap::ReadonlyMem);
        Ok(KvmVm {
            fd,
            routes: Mutex::new(routes),
            supported_cpuid,
            memory_slots,
            readonly_memory,
        })
    }
}

fn irqchip_route(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = chip;
    e.u.irqchip.pin = pin;
    e
}

/// GSIs 0-15 to the PICs and 0-23 to the IOAPIC (GSI 0 on pin 2, matching the
/// MADT's IRQ0 override), the routes KVM_SET_GSI_ROUTING would otherwise drop.
fn legacy_routes() -> BTreeMap<(u32, u32), kvm_irq_routing_entry> {
    let mut r = BTreeMap::new();
    for gsi in 0..16u32 {
        if gsi == 2 {
            continue;
        }
        let (chip, pin) = if gsi < 8 {
            (KVM_IRQCHIP_PIC_MASTER, gsi)
        } else {
            (KVM_IRQCHIP_PIC_SLAVE, gsi - 8)
        };
        r.insert((gsi, 0), irqchip_route(gsi, chip, pin));
    }
    for gsi in 0..24u32 {
        if gsi == 2 {
            continue;
        }
        let pin = if gsi == 0 { 2 } else { gsi };
        r.insert((gsi, 1), irqchip_route(gsi, KVM_IRQCHIP_IOAPIC, pin));
    }
    r
}

/// A KVM virtual machine.
pub struct KvmVm {
    fd: VmFd,
    /// Every GSI route, keyed by (gsi, n) since a legacy GSI has two.
    routes: Mutex<BTreeMap<(u32, u32), kvm_irq_routing_entry>>,
    supported_cpuid: CpuId,
    /// KVM_CAP_NR_MEMSLOTS.
    memory_slots: u32,
    /// KVM_CAP_READONLY_MEM.
    readonly_memory: bool,
}

impl KvmVm {
    fn commit_routes(&self, routes: &BTreeMap<(u32, u32), kvm_irq_routing_entry>) -> Result<()> {
        let entries: Vec<_> = routes.values().copied().collect();
        let table = KvmIrqRouting::from_entries(&entries)
            .map_err(|_| HypervisorError::Unsupported("too many interrupt routes".into()))?;
        self.fd
            .set_gsi_routing(&table)
            .map_err(ioctl_err("KVM_SET_GSI_ROUTING"))
    }
}

impl Vm for KvmVm {
    unsafe fn map_memory(
        &self,
        slot: u32,
        guest_addr: u64,
        size: u64,
        host_addr: u64,
        readonly: bool,
    ) -> Result<()> {
        let region = kvm_userspace_memory_region {
            slot,
            guest_phys_addr: guest_addr,
            memory_size: size,
            userspace_addr: host_addr,
            flags: if readonly { KVM_MEM_READONLY } else { 0 },
        };
        // SAFETY: the caller guarantees the host range outlives the VM.
        unsafe { self.fd.set_user_memory_region(region) }
            .map_err(ioctl_err("KVM_SET_USER_MEMORY_REGION"))
    }

    fn memory_slot_limit(&self) -> u32 {
        self.memory_slots
    }

    fn supports_readonly_memory(&self) -> bool {
        self.readonly_memory
    }

    unsafe fn map_user_memory(
        &self,
        slot: u32,
        guest_addr: u64,
        size: u64,
        host_addr: *mut u8,
        readonly: bool,
    ) -> Result<()> {
        if readonly && !self.readonly_memory {
            return Err(HypervisorError::Unsupported(
                "read-only memory slots (KVM_CAP_READONLY_MEM)".into(),
            ));
        }
        if slot >= self.memory_slots {
            return Err(HypervisorError::Unsupported(format!(
                "memory slot {slot} (KVM has {})",
                self.memory_slots
            )));
        }
        let region = kvm_userspace_memory_region {
            slot,
            guest_phys_addr: guest_addr,
            memory_size: size,
            userspace_addr: host_addr as u64,
            flags: if readonly { KVM_MEM_READONLY } else { 0 },
        };
        // SAFETY: the caller guarantees the host range stays mapped until
        // the slot is deleted (`unmap_user_memory`) or the VM is gone.
        unsafe { self.fd.set_user_memory_region(region) }
            .map_err(ioctl_err("KVM_SET_USER_MEMORY_REGION"))
    }

    fn unmap_user_memory(&self, slot: u32, guest_addr: u64, _size: u64) -> Result<()> {
        // A size of zero deletes the slot; KVM waits until no vCPU uses the
        // old memory map before it returns.
        let region = kvm_userspace_memory_region {
            slot,
            guest_phys_addr: guest_addr,
            memory_size: 0,
            userspace_addr: 0,
            flags: 0,
        };
        // SAFETY: deleting a slot maps no host memory; the guest loses
        // access to what the slot mapped.
        unsafe { self.fd.set_user_memory_region(region) }
            .map_err(ioctl_err("KVM_SET_USER_MEMORY_REGION (delete)"))
    }

    fn create_vcpu(&self, id: u8) -> Result<Box<dyn Vcpu>> {
        let fd = self
            .fd
            .create_vcpu(u64::from(id))
            .map_err(ioctl_err("KVM_CREATE_VCPU"))?;
        Ok(Box::new(KvmVcpu { fd }))
    }

    fn register_ioevent(&self, fd: &EventFd, addr: IoEventAddress) -> Result<()> {
        let addr = match addr {
            IoEventAddress::Pio(a) => kvm_ioctls::IoEventAddress::Pio(a),
            IoEventAddress::Mmio(a) => kvm_ioctls::IoEventAddress::Mmio(a),
        };
        self.fd
            .register_ioevent(fd, &addr, NoDatamatch)
            .map_err(ioctl_err("KVM_IOEVENTFD"))
    }

    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<()> {
        self.fd
            .register_irqfd(fd, gsi)
            .map_err(ioctl_err("KVM_IRQFD"))
    }

    fn set_msi_route(&self, gsi: u32, msg: Option<(u64, u32)>) -> Result<()> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        match msg {
            Some((addr, data)) => {
                let mut e = kvm_irq_routing_entry {
                    gsi,
                    type_: KVM_IRQ_ROUTING_MSI,
                    ..Default::default()
                };
                e.u.msi.address_lo = addr as u32;
                e.u.msi.address_hi = (addr >> 32) as u32;
                e.u.msi.data = data;
                // SAFETY: entries under (gsi, 0) for MSI GSIs are MSI routes.
                let unchanged = routes.get(&(gsi, 0)).is_some_and(|old| unsafe {
                    (old.u.msi.address_lo, old.u.msi.address_hi, old.u.msi.data)
                        == (e.u.msi.address_lo, e.u.msi.address_hi, e.u.msi.data)
                });
                if unchanged {
                    return Ok(());
                }
                routes.insert((gsi, 0), e);
            }
            None => {
                if routes.remove(&(gsi, 0)).is_none() {
                    return Ok(());
                }
            }
        }
        self.commit_routes(&routes)
    }

    fn get_clock(&self) -> Result<u64> {
        Ok(self
            .fd
            .get_clock()
            .map_err(ioctl_err("KVM_GET_CLOCK"))?
            .clock)
    }

    fn set_clock(&self, ns: u64) -> Result<()> {
        let data = kvm_bindings::kvm_clock_data {
            clock: ns,
            ..Default::default()
        };
        self.fd.set_clock(&data).map_err(ioctl_err("KVM_SET_CLOCK"))
    }

    fn supported_cpuid(&self) -> Result<CpuId> {
        Ok(self.supported_cpuid.clone())
    }
}

/// A KVM vCPU.
pub struct KvmVcpu {
    fd: VcpuFd,
}

impl Vcpu for KvmVcpu {
    fn run(&mut self) -> Result<VcpuExit<'_>> {
        use kvm_ioctls::VcpuExit as K;
        match self.fd.run() {
            Ok(exit) => Ok(match exit {
                K::IoIn(port, data) => VcpuExit::IoIn(port, data),
                K::IoOut(port, data) => VcpuExit::IoOut(port, data),
                K::MmioRead(addr, data) => VcpuExit::MmioRead(addr, data),
                K::MmioWrite(addr, data) => VcpuExit::MmioWrite(addr, data),
                K::Hlt => VcpuExit::Hlt,
                K::Shutdown => VcpuExit::Shutdown,
                K::Intr => VcpuExit::Interrupted,
                K::SystemEvent(kind, _) => match kind {
                    kvm_bindings::KVM_SYSTEM_EVENT_RESET => VcpuExit::Reset,
                    kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => VcpuExit::Shutdown,
                    other => VcpuExit::Unhandled(format!("system event {other}")),
                },
                K::FailEntry(reason, cpu) => VcpuExit::Unhandled(format!(
                    "VM entry failed (hardware reason {reason:#x}, cpu {cpu})"
                )),
                K::InternalError => VcpuExit::Unhandled("KVM internal error".into()),
                other => VcpuExit::Unhandled(format!("{other:?}")),
            }),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                Ok(VcpuExit::Interrupted)
            }
            Err(e) => Err(HypervisorError::Ioctl {
                op: "KVM_RUN",
                source: e,
            }),
        }
    }

    fn set_immediate_exit(&mut self, exit: bool) {
        self.fd.set_kvm_immediate_exit(u8::from(exit));
    }

    fn set_cpuid(&self, cpuid: &CpuId) -> Result<()> {
        self.fd
            .set_cpuid2(cpuid)
            .map_err(ioctl_err("KVM_SET_CPUID2"))
    }

    fn set_regs(&self, regs: &kvm_regs) -> Result<()> {
        self.fd.set_regs(regs).map_err(ioctl_err("KVM_SET_REGS"))
    }

    fn get_sregs(&self) -> Result<kvm_sregs> {
        self.fd.get_sregs().map_err(ioctl_err("KVM_GET_SREGS"))
    }

    fn set_sregs(&self, sregs: &kvm_sregs) -> Result<()> {
        self.fd.set_sregs(sregs).map_err(ioctl_err("KVM_SET_SREGS"))
    }

    fn set_fpu(&self, fpu: &kvm_fpu) -> Result<()> {
        self.fd.set_fpu(fpu).map_err(ioctl_err("KVM_SET_FPU"))
    }

    fn set_msrs(&self, msrs: &Msrs) -> Result<usize> {
        self.fd.set_msrs(msrs).map_err(ioctl_err("KVM_SET_MSRS"))
    }

    fn get_lapic(&self) -> Result<kvm_lapic_state> {
        self.fd.get_lapic().map_err(ioctl_err("KVM_GET_LAPIC"))
    }

    fn set_lapic(&self, lapic: &kvm_lapic_state) -> Result<()> {
        self.fd.set_lapic(lapic).map_err(ioctl_err("KVM_SET_LAPIC"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_host_kvm() {
        let amd = "flags\t\t: fpu vme svm sse\n";
        let plain = "flags\t\t: fpu vme sse\n";
        let loaded = |list: &'static [&'static str]| move |m: &str| list.contains(&m);
        assert_eq!(
            HostKvm::classify(false, loaded(&["kvm_amd"]), amd),
            HostKvm::Missing
        );
        assert_eq!(
            HostKvm::classify(true, loaded(&["kvm_pvm"]), plain),
            HostKvm::PvmOnly
        );
        assert_eq!(
            HostKvm::classify(true, loaded(&["kvm_amd"]), amd),
            HostKvm::Hardware
        );
        assert_eq!(
            HostKvm::classify(true, loaded(&["kvm_pvm", "kvm_amd"]), amd),
            HostKvm::Hardware
        );
        assert_eq!(
            HostKvm::classify(true, loaded(&["kvm_amd"]), plain),
            HostKvm::Missing
        );
        assert!(HostKvm::PvmOnly.describe().contains("nested"));
    }

    #[test]
    fn legacy_routes_cover_pic_and_ioapic() {
        let r = legacy_routes();
        // 15 PIC routes (no GSI 2) + 23 IOAPIC routes (no GSI 2).
        assert_eq!(r.len(), 15 + 23);
        // SAFETY: reading the irqchip member of entries created as irqchip routes.
        let pin0 = unsafe { r[&(0, 1)].u.irqchip.pin };
        assert_eq!(pin0, 2);
    }
}
