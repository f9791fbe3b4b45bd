//! vCPU state for booting Linux: CPUID with the VM's topology, MSRs, FPU,
//! local APIC, and the registers, GDT and page tables of the entry mode.

use kvm_bindings::{kvm_cpuid_entry2, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, CpuId, Msrs};
use vm_memory::{Bytes, GuestAddress};

use super::boot::{EntryMode, KernelEntry};
use super::layout::*;
use crate::hypervisor::{HypervisorError, Vcpu};
use crate::memory::GuestMemory;

/// Errors while setting up a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    #[error("cannot set up the vCPU")]
    Hypervisor(#[from] HypervisorError),
    #[error("cannot write boot page tables or GDT")]
    Memory(#[source] vm_memory::GuestMemoryError),
    #[error("the CPUID table is full")]
    CpuidFull,
    #[error("only {set} of {wanted} boot MSRs were accepted")]
    Msrs { set: usize, wanted: usize },
}

const CPUID_HYPERVISOR_BIT: u32 = 1 << 31; // leaf 1 ECX
const CPUID_HTT_BIT: u32 = 1 << 28; // leaf 1 EDX
const CPUID_TOPOEXT_BIT: u32 = 1 << 22; // leaf 0x8000_0001 ECX

/// Bits needed to number `n` items.
fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Adjusts the host's supported CPUID for vCPU `id` of `count`: one socket of
/// `count` cores, one thread each, APIC ids 0..count.
pub fn vcpu_cpuid(supported: &CpuId, id: u8, count: u8) -> Result<CpuId, CpuError> {
    let (id, count) = (u32::from(id), u32::from(count.max(1)));
    let core_bits = bits_for(count);
    let mut entries: Vec<kvm_cpuid_entry2> = supported.as_slice().to_vec();
    let max_basic = entries
        .iter()
        .find(|e| e.function == 0)
        .map(|e| e.eax)
        .unwrap_or(0);
    // Leaf 0xB must describe the topology; insert it if KVM left it out.
    if max_basic >= 0xb {
        entries.retain(|e| e.function != 0xb);
        for index in 0..2 {
            entries.push(kvm_cpuid_entry2 {
                function: 0xb,
                index,
                flags: kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                ..Default::default()
            });
        }
    }
    for e in entries.iter_mut() {
        match e.function {
            1 => {
                e.ebx = (id << 24) | (count << 16) | (e.ebx & 0xffff);
                e.ecx |= CPUID_HYPERVISOR_BIT;
                if count > 1 {
                    e.edx |= CPUID_HTT_BIT;
                } else {
                    e.edx &= !CPUID_HTT_BIT;
                }
            }
            4 => {
                // Cores per package - 1 in EAX[31:26]; threads sharing cache.
                e.eax = (e.eax & 0x3ff) | ((count - 1) << 26);
            }
            0xb => {
                e.edx = id;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8;
                    }
                    1 => {
                        e.eax = core_bits;
                        e.ebx = count;
                        e.ecx = (2 << 8) | 1;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            0x1f => {
                // Drop the V2 topology leaf: 0xB says everything we model.
                e.eax = 0;
                e.ebx = 0;
                e.ecx = e.index;
                e.edx = id;
            }
            0x8000_0001 => {
                // No AMD topology extension leaves: 0xB describes the topology.
                e.ecx &= !CPUID_TOPOEXT_BIT;
            }
            0x8000_0008 => {
                // AMD: NC = cores - 1, ApicIdCoreIdSize.
                e.ecx = (e.ecx & !0xf0ff) | (core_bits << 12) | (count - 1);
            }
            _ => {}
        }
    }
    CpuId::from_entries(&entries).map_err(|_| CpuError::CpuidFull)
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;

/// The MSR values a freshly reset CPU gets before Linux starts.
pub fn boot_msrs() -> Vec<(u32, u64)> {
    vec![
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
    ]
}

fn set_msrs(vcpu: &dyn Vcpu) -> Result<(), CpuError> {
    let entries: Vec<kvm_msr_entry> = boot_msrs()
        .into_iter()
        .map(|(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| CpuError::CpuidFull)?;
    let set = vcpu.set_msrs(&msrs)?;
    if set != entries.len() {
        return Err(CpuError::Msrs {
            set,
            wanted: entries.len(),
        });
    }
    Ok(())
}

/// x87 control word and MXCSR at reset.
fn set_fpu(vcpu: &dyn Vcpu) -> Result<(), CpuError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    Ok(vcpu.set_fpu(&fpu)?)
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_EXTINT: u32 = 0x7;
const APIC_MODE_NMI: u32 = 0x4;

fn lapic_reg(regs: &[std::os::raw::c_char], off: usize) -> u32 {
    let b: [u8; 4] = std::array::from_fn(|i| regs[off + i] as u8);
    u32::from_le_bytes(b)
}

fn set_lapic_reg(regs: &mut [std::os::raw::c_char], off: usize, v: u32) {
    for (i, b) in v.to_le_bytes().iter().enumerate() {
        regs[off + i] = *b as std::os::raw::c_char;
    }
}

/// LINT0 as ExtINT (the PIC), LINT1 as NMI, as firmware leaves them.
fn set_lapic(vcpu: &dyn Vcpu) -> Result<(), CpuError> {
    let mut lapic = vcpu.get_lapic()?;
    let lvt0 = lapic_reg(&lapic.regs, APIC_LVT0);
    set_lapic_reg(
        &mut lapic.regs,
        APIC_LVT0,
        (lvt0 & !0x700) | (APIC_MODE_EXTINT << 8),
    );
    let lvt1 = lapic_reg(&lapic.regs, APIC_LVT1);
    set_lapic_reg(
        &mut lapic.regs,
        APIC_LVT1,
        (lvt1 & !0x700) | (APIC_MODE_NMI << 8),
    );
    Ok(vcpu.set_lapic(&lapic)?)
}

/// GDT: null, 32-bit code (0x08), 64-bit code (0x10), data (0x18), TSS (0x20).
const GDT: [u64; 5] = [
    0,
    0x00cf_9b00_0000_ffff,
    0x00af_9b00_0000_ffff,
    0x00cf_9300_0000_ffff,
    0x0080_8b00_0000_0000,
];

fn segment(selector: u16, entry: u64) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: if (entry >> 55) & 1 == 1 {
            0xffff_ffff
        } else {
            0xfffff
        },
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: ((entry >> 55) & 1) as u8,
        avl: ((entry >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

// The reset stub must not overlap the ACPI tables.
const _: () = assert!(RESET_VECTOR >= ACPI_END);

/// Real-mode code at the reset vector. There is no BIOS: a CPU that the
/// guest resets (INIT to the boot CPU, as Linux's reboot path can do) lands
/// here and asks the VMM for a machine reset through the ACPI reset
/// register, so a guest-initiated CPU reset becomes a VM reset.
pub fn reset_vector_stub() -> [u8; 16] {
    let [port_lo, port_hi] = ACPI_RESET_PORT.to_le_bytes();
    let mut stub = [0x90u8; 16]; // nop
    stub[..9].copy_from_slice(&[
        0xb0,
        ACPI_RESET_VALUE, // mov al, reset value
        0xba,
        port_lo,
        port_hi, // mov dx, reset port
        0xee,    // out dx, al
        0xf4,    // hlt
        0xeb,
        0xfd, // jmp back to hlt
    ]);
    stub
}

/// Writes the GDT, the reset-vector stub and, for 64-bit entry, identity
/// page tables for 4 GiB.
pub fn write_boot_tables(mem: &GuestMemory) -> Result<(), CpuError> {
    mem.write_slice(&reset_vector_stub(), GuestAddress(RESET_VECTOR))
        .map_err(CpuError::Memory)?;
    for (i, e) in GDT.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT_START + 8 * i as u64))
            .map_err(CpuError::Memory)?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_START))
        .map_err(CpuError::Memory)?;
    let pdpt = PML4_START + 0x1000;
    let pd = PML4_START + 0x2000;
    mem.write_obj(pdpt | 0x3, GuestAddress(PML4_START))
        .map_err(CpuError::Memory)?;
    for i in 0..4u64 {
        mem.write_obj((pd + i * 0x1000) | 0x3, GuestAddress(pdpt + i * 8))
            .map_err(CpuError::Memory)?;
        for j in 0..512u64 {
            let phys = (i << 30) | (j << 21);
            mem.write_obj(phys | 0x83, GuestAddress(pd + i * 0x1000 + j * 8))
                .map_err(CpuError::Memory)?;
        }
    }
    Ok(())
}

const X86_CR0_PE: u64 = 1;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Sets registers for the boot vCPU's kernel entry.
fn set_entry_regs(vcpu: &dyn Vcpu, entry: KernelEntry) -> Result<(), CpuError> {
    let mut sregs = vcpu.get_sregs()?;
    let (code, data) = match entry.mode {
        EntryMode::Linux64 => (segment(0x10, GDT[2]), segment(0x18, GDT[3])),
        EntryMode::Pvh => (segment(0x08, GDT[1]), segment(0x18, GDT[3])),
    };
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(0x20, GDT[4]);
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 7;
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: entry.entry.0,
        ..Default::default()
    };
    match entry.mode {
        EntryMode::Linux64 => {
            sregs.cr3 = PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
            sregs.efer |= EFER_LME | EFER_LMA;
            regs.rsi = ZERO_PAGE_START;
            regs.rsp = ZERO_PAGE_START - 0x10;
            regs.rbp = regs.rsp;
        }
        EntryMode::Pvh => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rbx = PVH_INFO_START;
        }
    }
    vcpu.set_sregs(&sregs)?;
    vcpu.set_regs(&regs)?;
    Ok(())
}

/// Configures vCPU `id` of `count`. The boot vCPU (id 0) gets `entry`; the
/// others wait for INIT/SIPI from the guest.
pub fn configure_vcpu(
    vcpu: &dyn Vcpu,
    supported: &CpuId,
    id: u8,
    count: u8,
    entry: Option<KernelEntry>,
) -> Result<(), CpuError> {
    vcpu.set_cpuid(&vcpu_cpuid(supported, id, count)?)?;
    set_msrs(vcpu)?;
    set_fpu(vcpu)?;
    set_lapic(vcpu)?;
    if let Some(entry) = entry {
        set_entry_regs(vcpu, entry)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_like_cpuid() -> CpuId {
        let entries = [
            kvm_cpuid_entry2 {
                function: 0,
                eax: 0xd,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0x0008_0800,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0x8000_0008,
                ecx: 0x7007,
                ..Default::default()
            },
        ];
        CpuId::from_entries(&entries).unwrap()
    }

    fn leaf(c: &CpuId, f: u32, i: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == f && e.index == i)
            .unwrap()
    }

    #[test]
    fn cpuid_describes_the_topology() {
        let c = vcpu_cpuid(&host_like_cpuid(), 2, 4).unwrap();
        let l1 = leaf(&c, 1, 0);
        assert_eq!(l1.ebx >> 24, 2, "APIC id");
        assert_eq!((l1.ebx >> 16) & 0xff, 4, "logical processors");
        assert_ne!(l1.ecx & CPUID_HYPERVISOR_BIT, 0);
        assert_ne!(l1.edx & CPUID_HTT_BIT, 0);
        let smt = leaf(&c, 0xb, 0);
        assert_eq!((smt.ebx, smt.ecx >> 8, smt.edx), (1, 1, 2));
        let core = leaf(&c, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.ecx >> 8, core.edx), (2, 4, 2, 2));
        let amd = leaf(&c, 0x8000_0008, 0);
        assert_eq!(amd.ecx & 0xff, 3);
        assert_eq!((amd.ecx >> 12) & 0xf, 2);
        let single = vcpu_cpuid(&host_like_cpuid(), 0, 1).unwrap();
        assert_eq!(leaf(&single, 1, 0).edx & CPUID_HTT_BIT, 0);
        assert_eq!(leaf(&single, 0xb, 1).ebx, 1);
    }

    #[test]
    fn gdt_segments_decode() {
        let cs = segment(0x10, GDT[2]);
        assert_eq!((cs.l, cs.db, cs.type_, cs.present, cs.g), (1, 0, 0xb, 1, 1));
        let cs32 = segment(0x08, GDT[1]);
        assert_eq!((cs32.l, cs32.db), (0, 1));
        let ds = segment(0x18, GDT[3]);
        assert_eq!((ds.type_, ds.s, ds.limit), (3, 1, 0xffff_ffff));
    }

    #[test]
    fn reset_vector_stub_writes_the_acpi_reset_register() {
        let mem = crate::memory::create_guest_memory(64 << 20).unwrap();
        write_boot_tables(&mem).unwrap();
        let mut stub = [0u8; 16];
        mem.read_slice(&mut stub, GuestAddress(RESET_VECTOR))
            .unwrap();
        // mov al, ACPI_RESET_VALUE; mov dx, ACPI_RESET_PORT; out dx, al; hlt
        assert_eq!(stub[..2], [0xb0, ACPI_RESET_VALUE]);
        assert_eq!(stub[2], 0xba);
        assert_eq!(u16::from_le_bytes([stub[3], stub[4]]), ACPI_RESET_PORT);
        assert_eq!(stub[5..7], [0xee, 0xf4]);
    }

    #[test]
    fn page_tables_identity_map_4g() {
        let mem = crate::memory::create_guest_memory(64 << 20).unwrap();
        write_boot_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4 & !0xfff, PML4_START + 0x1000);
        let pdpt3: u64 = mem
            .read_obj(GuestAddress(PML4_START + 0x1000 + 24))
            .unwrap();
        let pde: u64 = mem
            .read_obj(GuestAddress((pdpt3 & !0xfff) + 511 * 8))
            .unwrap();
        assert_eq!(pde, (3 << 30) | (511 << 21) | 0x83);
    }
}
