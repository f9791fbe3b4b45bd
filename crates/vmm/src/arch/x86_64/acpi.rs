//! ACPI tables for x86_64 guests.
//!
//! [`create_acpi_tables`] writes, into the reserved guest region
//! [`ACPI_START`]..[`ACPI_END`], everything a stock Linux kernel needs to run
//! on a hardware-reduced ACPI platform:
//!
//! ```text
//! RSDP (at ACPI_START, revision 2) -> XSDT -> FADT -> DSDT (via X_DSDT)
//!                                          -> MADT (local APICs, IOAPIC, IRQ0 override, NMI)
//!                                          -> MCFG (ECAM for bus 0)
//! ```
//!
//! The FADT declares a hardware-reduced platform (no PM1 blocks, no SCI, no
//! FACS): sleep goes through the 8-bit sleep control/status registers at
//! [`ACPI_SLEEP_CONTROL_PORT`]/[`ACPI_SLEEP_STATUS_PORT`] with the SLP_TYP of
//! `\_S5_`, reset through [`ACPI_RESET_PORT`]. It also says there is no VGA,
//! no CMOS RTC and no i8042, so Linux does not probe for them.
//!
//! The DSDT describes:
//! - `\_S5_`: soft-off sleep type [`ACPI_S5_SLEEP_TYPE`].
//! - `\_SB.PCI0`: the PCIe host bridge (bus 0 only), its I/O and memory
//!   windows, and an `_OSC` that grants the OS every control it asks for.
//!   There is no `_PRT`: PCI devices use MSI-X only.
//! - `\_SB.MCFG`: a PNP0C02 motherboard resource reserving the ECAM range,
//!   which Linux requires before it trusts the MCFG table.
//! - `\_SB.COM1`: the legacy 16550 at [`SERIAL_PORT`], IRQ [`SERIAL_IRQ`].
//! - `\_SB.PWRB`: a control-method power button (PNP0C0C).
//! - `\_SB.GED0`: a Generic Event Device (ACPI0013) on GSI [`ACPI_GED_IRQ`]
//!   whose `_EVT` reads the byte register at [`ACPI_GED_PORT`] and, when bit 0
//!   is set, sends `Notify(\_SB.PWRB, 0x80)`: the VMM presses the power button
//!   by setting that bit and pulsing the GSI.
//! - `\_SB.CPxx`: one ACPI0007 processor device per vCPU (`_UID` = APIC id,
//!   `xx` in hex).

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::layout::{
    ACPI_END, ACPI_GED_IRQ, ACPI_GED_PORT, ACPI_RESET_PORT, ACPI_RESET_VALUE, ACPI_S5_SLEEP_TYPE,
    ACPI_SLEEP_CONTROL_PORT, ACPI_SLEEP_STATUS_PORT, ACPI_START, IOAPIC_START, LAPIC_START,
    PCI_CONFIG_IO_PORT, PCI_CONFIG_IO_SIZE, PCI_ECAM_SIZE, PCI_ECAM_START, PCI_MMIO32_SIZE,
    PCI_MMIO32_START, SERIAL_IRQ, SERIAL_PORT,
};

/// OEM id in every table header and the RSDP.
const OEM_ID: [u8; 6] = *b"PEARVI";
/// OEM table id in every table header.
const OEM_TABLE_ID: [u8; 8] = *b"PVTABLES";
const OEM_REVISION: u32 = 1;
/// FADT `HYPERVISOR_VENDOR_IDENTITY`.
const HYPERVISOR_VENDOR_ID: [u8; 8] = *b"PEARVISR";

/// Tables start on this boundary inside the ACPI region.
const TABLE_ALIGN: u64 = 16;

/// DSDT revision: 2 or more means 64-bit AML integers (needed for the
/// QWord memory window).
const DSDT_REVISION: u8 = 6;
/// MADT revision of ACPI 6.2..6.4.
const MADT_REVISION: u8 = 5;
/// Size of the MADT header: table header, local APIC address, flags.
const MADT_HEADER_LEN: u32 = 44;
/// MADT flags: PCAT_COMPAT (KVM's in-kernel irqchip has a dual 8259).
const MADT_PCAT_COMPAT: u32 = 1;
/// MADT Interrupt Source Override / Local APIC NMI flags: edge, active high.
const MPS_INTI_EDGE_HIGH: u16 = 0x0005;
/// IOAPIC id in the MADT. IOAPIC and local APIC ids are separate namespaces.
const IOAPIC_ID: u8 = 0;
/// FADT IAPC_BOOT_ARCH: VGA not present.
const IAPC_BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;
/// FADT IAPC_BOOT_ARCH: CMOS RTC not present.
const IAPC_BOOT_ARCH_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;
/// `Notify` value for a power button press.
const NOTIFY_POWER_BUTTON: u8 = 0x80;

// The layout constants the 32-bit ACPI fields carry must fit them.
const _: () = assert!(LAPIC_START <= u32::MAX as u64);
const _: () = assert!(IOAPIC_START <= u32::MAX as u64);
const _: () = assert!(PCI_ECAM_START + PCI_ECAM_SIZE - 1 <= u32::MAX as u64);
const _: () = assert!(PCI_ECAM_SIZE <= u32::MAX as u64);
const _: () = assert!(PCI_MMIO32_SIZE > 0);
const _: () = assert!(PCI_MMIO32_START + PCI_MMIO32_SIZE - 1 <= u32::MAX as u64);
const _: () = assert!(PCI_CONFIG_IO_SIZE > 0 && PCI_CONFIG_IO_SIZE <= u8::MAX as u64);
const _: () = assert!(PCI_CONFIG_IO_PORT as u64 + PCI_CONFIG_IO_SIZE <= u16::MAX as u64);
const _: () = assert!(PCI_CONFIG_IO_PORT > 0);
const _: () = assert!(ACPI_START & (TABLE_ALIGN - 1) == 0 && ACPI_START < ACPI_END);

/// What the tables describe beyond the fixed layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcpiConfig {
    /// Number of vCPUs, 1..=255; their APIC ids are 0..num_cpus-1.
    pub num_cpus: u8,
    /// Start of the PCI 64-bit MMIO window (`layout::pci_mmio64_start`).
    pub pci_mmio64_start: u64,
    /// Size of the PCI 64-bit MMIO window (`layout::PCI_MMIO64_SIZE`).
    pub pci_mmio64_size: u64,
}

/// Errors while building or writing the ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("the ACPI tables need at least one vCPU")]
    NoCpus,
    #[error("invalid PCI 64-bit MMIO window: start {start:#x}, size {size:#x}")]
    InvalidMmio64Window { start: u64, size: u64 },
    #[error("ACPI table {table} ({len} bytes) does not fit below {end:#x}")]
    TooLarge {
        table: &'static str,
        len: usize,
        end: u64,
    },
    #[error("cannot write ACPI table {table} into guest memory")]
    Write {
        table: &'static str,
        #[source]
        source: GuestMemoryError,
    },
}

/// Writes the RSDP (at [`ACPI_START`]) and all tables after it (within
/// [`ACPI_START`]..[`ACPI_END`]); returns the RSDP address.
pub fn create_acpi_tables(
    mem: &GuestMemoryMmap<()>,
    cfg: &AcpiConfig,
) -> Result<GuestAddress, AcpiError> {
    if cfg.num_cpus == 0 {
        return Err(AcpiError::NoCpus);
    }
    let mmio64_end = mmio64_end(cfg)?;

    let mut writer = TableWriter::new(mem);
    // The RSDP goes first, at ACPI_START, but needs the XSDT address.
    let rsdp_addr = writer.reserve("RSDP", Rsdp::len())?;

    let dsdt = dsdt(cfg, mmio64_end);
    let dsdt_addr = writer.append("DSDT", dsdt.as_slice())?;

    let fadt_addr = writer.append("FACP", &aml_bytes(&fadt(dsdt_addr)))?;
    let madt_addr = writer.append("APIC", madt(cfg.num_cpus).as_slice())?;
    let mcfg_addr = writer.append("MCFG", &aml_bytes(&mcfg()))?;

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for addr in [fadt_addr, madt_addr, mcfg_addr] {
        xsdt.add_entry(addr);
    }
    let xsdt_addr = writer.append("XSDT", &aml_bytes(&xsdt))?;

    let rsdp = Rsdp::new(OEM_ID, xsdt_addr);
    writer.write_at("RSDP", rsdp_addr, &aml_bytes(&rsdp))?;
    Ok(GuestAddress(rsdp_addr))
}

/// Last byte of the 64-bit PCI window, after checking it is a real range.
fn mmio64_end(cfg: &AcpiConfig) -> Result<u64, AcpiError> {
    let invalid = AcpiError::InvalidMmio64Window {
        start: cfg.pci_mmio64_start,
        size: cfg.pci_mmio64_size,
    };
    if cfg.pci_mmio64_size == 0 {
        return Err(invalid);
    }
    cfg.pci_mmio64_start
        .checked_add(cfg.pci_mmio64_size - 1)
        .ok_or(invalid)
}

/// Places tables one after the other in the ACPI region of guest memory.
struct TableWriter<'a> {
    mem: &'a GuestMemoryMmap<()>,
    next: u64,
}

impl<'a> TableWriter<'a> {
    fn new(mem: &'a GuestMemoryMmap<()>) -> Self {
        Self {
            mem,
            next: ACPI_START,
        }
    }

    /// Takes `len` bytes at the next aligned address below [`ACPI_END`].
    fn reserve(&mut self, table: &'static str, len: usize) -> Result<u64, AcpiError> {
        let addr = self.next.next_multiple_of(TABLE_ALIGN);
        let end = u64::try_from(len)
            .ok()
            .and_then(|len| addr.checked_add(len))
            .filter(|&end| end <= ACPI_END)
            .ok_or(AcpiError::TooLarge {
                table,
                len,
                end: ACPI_END,
            })?;
        self.next = end;
        Ok(addr)
    }

    fn write_at(&self, table: &'static str, addr: u64, bytes: &[u8]) -> Result<(), AcpiError> {
        self.mem
            .write_slice(bytes, GuestAddress(addr))
            .map_err(|source| AcpiError::Write { table, source })
    }

    /// Reserves room for `bytes`, writes them there and returns the address.
    fn append(&mut self, table: &'static str, bytes: &[u8]) -> Result<u64, AcpiError> {
        let addr = self.reserve(table, bytes.len())?;
        self.write_at(table, addr, bytes)?;
        Ok(addr)
    }
}

fn aml_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

/// An 8-bit System I/O register.
fn io_register_u8(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

fn fadt(dsdt_addr: u64) -> impl Aml {
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        // Power and sleep buttons are control-method devices, not fixed ones.
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    // "MSI not supported" (bit 3) stays clear, and so does "8042 present".
    fadt.iapc_boot_arch =
        (IAPC_BOOT_ARCH_VGA_NOT_PRESENT | IAPC_BOOT_ARCH_CMOS_RTC_NOT_PRESENT).into();
    fadt.reset_reg = io_register_u8(ACPI_RESET_PORT);
    fadt.reset_value = ACPI_RESET_VALUE;
    fadt.sleep_control_reg = io_register_u8(ACPI_SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg = io_register_u8(ACPI_SLEEP_STATUS_PORT);
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(HYPERVISOR_VENDOR_ID).into();
    fadt.finalize()
}

fn madt(num_cpus: u8) -> Sdt {
    let mut madt = Sdt::new(
        *b"APIC",
        MADT_HEADER_LEN,
        MADT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    // Checked at compile time above: the addresses fit 32 bits.
    madt.write_u32(36, LAPIC_START as u32);
    madt.write_u32(40, MADT_PCAT_COMPAT);

    for id in 0..num_cpus {
        let lapic = ProcessorLocalApic::new(id, id, EnabledStatus::Enabled);
        madt.append_slice(&aml_bytes(&lapic));
    }
    madt.append_slice(&aml_bytes(&IoApic::new(IOAPIC_ID, IOAPIC_START as u32, 0)));

    // Interrupt Source Override: ISA IRQ 0 (PIT) is wired to GSI 2.
    let mut iso = vec![2u8, 10, 0, 0];
    iso.extend_from_slice(&2u32.to_le_bytes());
    iso.extend_from_slice(&MPS_INTI_EDGE_HIGH.to_le_bytes());
    madt.append_slice(&iso);

    // Local APIC NMI: all processors (0xff), LINT1.
    let mut nmi = vec![4u8, 6, 0xff];
    nmi.extend_from_slice(&MPS_INTI_EDGE_HIGH.to_le_bytes());
    nmi.push(1);
    madt.append_slice(&nmi);
    madt
}

fn mcfg() -> MCFG {
    let mut mcfg = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    // ECAM covers exactly one bus.
    mcfg.add_ecam(PCI_ECAM_START, 0, 0, 0);
    mcfg
}

fn dsdt(cfg: &AcpiConfig, mmio64_end: u64) -> Sdt {
    let mut body = Vec::new();

    // \_S5_: {SLP_TYPa, SLP_TYPb, reserved, reserved}.
    aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![
            &ACPI_S5_SLEEP_TYPE,
            &aml::ZERO,
            &aml::ZERO,
            &aml::ZERO,
        ]),
    )
    .to_aml_bytes(&mut body);

    let mut sb = Vec::new();
    pci_host_bridge(cfg.pci_mmio64_start, mmio64_end, &mut sb);
    ecam_reservation(&mut sb);
    com1(&mut sb);
    power_button(&mut sb);
    generic_event_device(&mut sb);
    for id in 0..cfg.num_cpus {
        processor(id, &mut sb);
    }
    body.extend(aml::Scope::raw("\\_SB_".into(), sb));

    let mut dsdt = Sdt::new(
        *b"DSDT",
        36,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    dsdt.append_slice(&body);
    dsdt
}

/// `\_SB.PCI0`: the PCIe host bridge.
fn pci_host_bridge(mmio64_start: u64, mmio64_end: u64, sink: &mut Vec<u8>) {
    // Checked at compile time above: these fit their fields.
    let cfg_io_len = PCI_CONFIG_IO_SIZE as u8;
    let cfg_io_end = PCI_CONFIG_IO_PORT + u16::from(cfg_io_len);
    let mmio32_start = PCI_MMIO32_START as u32;
    let mmio32_end = (PCI_MMIO32_START + PCI_MMIO32_SIZE - 1) as u32;

    let bus = aml::AddressSpace::<u16>::new_bus_number(0, 0);
    let cfg_io = aml::IO::new(PCI_CONFIG_IO_PORT, PCI_CONFIG_IO_PORT, 1, cfg_io_len);
    let io_low = aml::AddressSpace::<u16>::new_io(0, PCI_CONFIG_IO_PORT - 1, None);
    let io_high = aml::AddressSpace::<u16>::new_io(cfg_io_end, u16::MAX, None);
    let mmio32 = aml::AddressSpace::<u32>::new_memory(
        aml::AddressSpaceCacheable::NotCacheable,
        true,
        mmio32_start,
        mmio32_end,
        None,
    );
    let mmio64 = aml::AddressSpace::<u64>::new_memory(
        aml::AddressSpaceCacheable::NotCacheable,
        true,
        mmio64_start,
        mmio64_end,
        None,
    );
    let crs = aml::ResourceTemplate::new(vec![&bus, &cfg_io, &io_low, &io_high, &mmio32, &mmio64]);

    // _OSC(UUID, Revision, Count, Capabilities): grant everything asked for.
    let osc_return = aml::Return::new(&aml::Arg(3));
    let osc = aml::Method::new("_OSC".into(), 4, false, vec![&osc_return]);

    let hid = aml::EISAName::new("PNP0A08");
    let cid = aml::EISAName::new("PNP0A03");
    let zero = aml::ZERO;
    let one = aml::ONE;
    aml::Device::new(
        "PCI0".into(),
        vec![
            &aml::Name::new("_HID".into(), &hid),
            &aml::Name::new("_CID".into(), &cid),
            &aml::Name::new("_ADR".into(), &zero),
            &aml::Name::new("_SEG".into(), &zero),
            &aml::Name::new("_UID".into(), &zero),
            &aml::Name::new("_BBN".into(), &zero),
            &aml::Name::new("_CCA".into(), &one),
            &aml::Name::new("_CRS".into(), &crs),
            &osc,
        ],
    )
    .to_aml_bytes(sink);
}

/// `\_SB.MCFG`: PNP0C02 motherboard resource reserving the ECAM window.
fn ecam_reservation(sink: &mut Vec<u8>) {
    // Checked at compile time above: ECAM lies below 4 GiB.
    let ecam = aml::Memory32Fixed::new(true, PCI_ECAM_START as u32, PCI_ECAM_SIZE as u32);
    let crs = aml::ResourceTemplate::new(vec![&ecam]);
    aml::Device::new(
        "MCFG".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C02")),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new("_CRS".into(), &crs),
        ],
    )
    .to_aml_bytes(sink);
}

/// `\_SB.COM1`: the legacy 16550 UART.
fn com1(sink: &mut Vec<u8>) {
    let io = aml::IO::new(SERIAL_PORT, SERIAL_PORT, 1, 8);
    // Consumer, edge triggered, active high, exclusive.
    let irq = aml::Interrupt::new(true, true, false, false, SERIAL_IRQ);
    let crs = aml::ResourceTemplate::new(vec![&io, &irq]);
    aml::Device::new(
        "COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new("_CRS".into(), &crs),
        ],
    )
    .to_aml_bytes(sink);
}

/// `\_SB.PWRB`: control-method power button.
fn power_button(sink: &mut Vec<u8>) {
    aml::Device::new(
        "PWRB".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C0C")),
            &aml::Name::new("_UID".into(), &aml::ZERO),
        ],
    )
    .to_aml_bytes(sink);
}

/// `\_SB.GED0`: Generic Event Device signalling power button presses.
fn generic_event_device(sink: &mut Vec<u8>) {
    // Consumer, edge triggered, active high, exclusive.
    let irq = aml::Interrupt::new(true, true, false, false, ACPI_GED_IRQ);
    let crs = aml::ResourceTemplate::new(vec![&irq]);

    let region = aml::OpRegion::new(
        "GDRG".into(),
        aml::OpRegionSpace::SystemIO,
        &ACPI_GED_PORT,
        &1u8,
    );
    let field = aml::Field::new(
        "GDRG".into(),
        aml::FieldAccessType::Byte,
        aml::FieldLockRule::NoLock,
        aml::FieldUpdateRule::WriteAsZeroes,
        vec![aml::FieldEntry::Named(*b"GEDR", 8)],
    );

    // Method (_EVT, 1, Serialized) {
    //     Local0 = GEDR
    //     If (Local0 & 1) { Notify (\_SB.PWRB, 0x80) }
    // }
    let gedr = aml::Path::new("GEDR");
    let local0 = aml::Local(0);
    let load = aml::Store::new(&local0, &gedr);
    let pressed = aml::And::new(&aml::ZERO, &local0, &aml::ONE);
    let pwrb = aml::Path::new("\\_SB_.PWRB");
    let notify = aml::Notify::new(&pwrb, &NOTIFY_POWER_BUTTON);
    let on_press = aml::If::new(&pressed, vec![&notify]);
    let evt = aml::Method::new("_EVT".into(), 1, true, vec![&load, &on_press]);

    aml::Device::new(
        "GED0".into(),
        vec![
            &aml::Name::new("_HID".into(), &"ACPI0013"),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new("_CRS".into(), &crs),
            &region,
            &field,
            &evt,
        ],
    )
    .to_aml_bytes(sink);
}

/// `\_SB.CPxx`: processor device for APIC id / ACPI UID `id`.
fn processor(id: u8, sink: &mut Vec<u8>) {
    let name = format!("CP{id:02X}");
    aml::Device::new(
        name.as_str().into(),
        vec![
            &aml::Name::new("_HID".into(), &"ACPI0007"),
            &aml::Name::new("_UID".into(), &id),
        ],
    )
    .to_aml_bytes(sink);
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEM_SIZE: usize = 2 << 20;
    const MMIO64_START: u64 = 0x10_0000_0000;
    const MMIO64_SIZE: u64 = 0x10_0000_0000;

    fn config(num_cpus: u8) -> AcpiConfig {
        AcpiConfig {
            num_cpus,
            pci_mmio64_start: MMIO64_START,
            pci_mmio64_size: MMIO64_SIZE,
        }
    }

    fn guest_memory() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
    }

    fn read(mem: &GuestMemoryMmap<()>, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |acc, x| acc.wrapping_add(*x))
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    /// A whole table (header length), after checking it lies in the region.
    fn read_table(mem: &GuestMemoryMmap<()>, addr: u64) -> Vec<u8> {
        assert!(addr >= ACPI_START, "table at {addr:#x} below ACPI_START");
        let header = read(mem, addr, 36);
        let len = u32_at(&header, 4) as usize;
        assert!(len >= 36);
        assert!(
            addr + len as u64 <= ACPI_END,
            "table at {addr:#x} ({len} bytes) past ACPI_END"
        );
        let table = read(mem, addr, len);
        assert_eq!(sum(&table), 0, "bad checksum for {:?}", &table[0..4]);
        table
    }

    struct Tables {
        rsdp: Vec<u8>,
        xsdt: Vec<u8>,
        fadt: Vec<u8>,
        madt: Vec<u8>,
        mcfg: Vec<u8>,
        dsdt: Vec<u8>,
    }

    fn build(num_cpus: u8) -> Tables {
        let mem = guest_memory();
        let rsdp_addr = create_acpi_tables(&mem, &config(num_cpus)).unwrap();
        assert_eq!(rsdp_addr, GuestAddress(ACPI_START));
        let rsdp = read(&mem, rsdp_addr.0, 36);
        let xsdt = read_table(&mem, u64_at(&rsdp, 24));
        let mut fadt = None;
        let mut madt = None;
        let mut mcfg = None;
        for i in 0..(xsdt.len() - 36) / 8 {
            let table = read_table(&mem, u64_at(&xsdt, 36 + 8 * i));
            let slot = match &table[0..4] {
                b"FACP" => &mut fadt,
                b"APIC" => &mut madt,
                b"MCFG" => &mut mcfg,
                other => panic!("unexpected table {other:?} in XSDT"),
            };
            assert!(slot.is_none(), "duplicate table {:?}", &table[0..4]);
            *slot = Some(table);
        }
        let fadt = fadt.expect("no FADT");
        let dsdt = read_table(&mem, u64_at(&fadt, 140));
        Tables {
            rsdp,
            xsdt,
            fadt,
            madt: madt.expect("no MADT"),
            mcfg: mcfg.expect("no MCFG"),
            dsdt,
        }
    }

    #[test]
    fn rsdp_points_at_xsdt() {
        let t = build(1);
        assert_eq!(&t.rsdp[0..8], b"RSD PTR ");
        assert_eq!(sum(&t.rsdp[0..20]), 0, "ACPI 1.0 checksum");
        assert_eq!(sum(&t.rsdp), 0, "extended checksum");
        assert_eq!(&t.rsdp[9..15], &OEM_ID);
        assert_eq!(t.rsdp[15], 2, "revision");
        assert_eq!(u32_at(&t.rsdp, 20), 36, "length");
        assert_eq!(&t.xsdt[0..4], b"XSDT");
        assert_eq!(t.xsdt.len(), 36 + 3 * 8, "FADT, MADT and MCFG");
    }

    #[test]
    fn fadt_is_hardware_reduced_with_reset_and_sleep_registers() {
        let t = build(2);
        let f = &t.fadt;
        assert_eq!(&f[0..4], b"FACP");
        assert_eq!(f.len(), 276);
        assert_eq!(f[8], 6, "major revision");

        let flags = u32_at(f, 112);
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        assert_ne!(flags & (1 << 4), 0, "PWR_BUTTON (no fixed power button)");

        let boot_arch = u16_at(f, 109);
        assert_ne!(boot_arch & (1 << 2), 0, "VGA not present");
        assert_ne!(boot_arch & (1 << 5), 0, "CMOS RTC not present");
        assert_eq!(boot_arch & (1 << 3), 0, "MSI must be supported");

        // 8-bit System I/O generic address structures.
        let io8 = |port: u16| {
            let mut gas = vec![1u8, 8, 0, 1];
            gas.extend_from_slice(&u64::from(port).to_le_bytes());
            gas
        };
        assert_eq!(&f[116..128], io8(ACPI_RESET_PORT).as_slice(), "RESET_REG");
        assert_eq!(f[128], ACPI_RESET_VALUE);
        assert_eq!(&f[244..256], io8(ACPI_SLEEP_CONTROL_PORT).as_slice());
        assert_eq!(&f[256..268], io8(ACPI_SLEEP_STATUS_PORT).as_slice());
        assert_eq!(&f[268..276], &HYPERVISOR_VENDOR_ID);

        assert_eq!(u32_at(f, 40), 0, "32-bit DSDT unused");
        assert_eq!(&t.dsdt[0..4], b"DSDT");
        assert!(t.dsdt[8] >= 2, "DSDT revision 2+ for 64-bit integers");
    }

    fn check_madt(num_cpus: u8) {
        let m = build(num_cpus).madt;
        assert_eq!(&m[0..4], b"APIC");
        assert_eq!(u64::from(u32_at(&m, 36)), LAPIC_START);
        assert_eq!(u32_at(&m, 40) & 1, 1, "PCAT_COMPAT");

        let mut apic_ids = Vec::new();
        let mut ioapics = Vec::new();
        let mut overrides = Vec::new();
        let mut nmis = Vec::new();
        let mut off = 44;
        while off < m.len() {
            let (kind, len) = (m[off], m[off + 1] as usize);
            assert!(len >= 2 && off + len <= m.len(), "bad entry at {off}");
            let e = &m[off..off + len];
            match kind {
                0 => {
                    assert_eq!(len, 8);
                    assert_eq!(u32_at(e, 4) & 1, 1, "local APIC enabled");
                    assert_eq!(e[2], e[3], "processor UID = APIC id");
                    apic_ids.push(e[3]);
                }
                1 => {
                    assert_eq!(len, 12);
                    assert_eq!(u64::from(u32_at(e, 4)), IOAPIC_START);
                    assert_eq!(u32_at(e, 8), 0, "GSI base");
                    ioapics.push(e[2]);
                }
                2 => {
                    assert_eq!(len, 10);
                    overrides.push((e[2], e[3], u32_at(e, 4), u16_at(e, 8)));
                }
                4 => {
                    assert_eq!(len, 6);
                    nmis.push((e[2], e[5]));
                }
                other => panic!("unexpected MADT entry type {other}"),
            }
            off += len;
        }
        assert_eq!(off, m.len());
        assert_eq!(apic_ids, (0..num_cpus).collect::<Vec<_>>());
        assert_eq!(ioapics.len(), 1);
        assert_eq!(overrides, vec![(0, 0, 2, MPS_INTI_EDGE_HIGH)]);
        assert_eq!(nmis, vec![(0xff, 1)]);
    }

    #[test]
    fn madt_one_cpu() {
        check_madt(1);
    }

    #[test]
    fn madt_two_cpus() {
        check_madt(2);
    }

    #[test]
    fn madt_64_cpus() {
        check_madt(64);
    }

    #[test]
    fn madt_255_cpus() {
        check_madt(255);
    }

    #[test]
    fn mcfg_covers_bus_0() {
        let m = build(1).mcfg;
        assert_eq!(&m[0..4], b"MCFG");
        assert_eq!(m.len(), 44 + 16, "one allocation");
        assert_eq!(u64_at(&m, 44), PCI_ECAM_START);
        assert_eq!(u16_at(&m, 52), 0, "segment");
        assert_eq!((m[54], m[55]), (0, 0), "bus range");
        assert_eq!(PCI_ECAM_SIZE, 1 << 20, "ECAM size is one bus");
    }

    #[test]
    fn dsdt_describes_devices() {
        let d = build(4).dsdt;
        for name in [
            &b"_S5_"[..],
            b"_SB_",
            b"PCI0",
            b"MCFG",
            b"COM1",
            b"PWRB",
            b"GED0",
            b"_EVT",
            b"_OSC",
            b"GEDR",
            b"CP00",
            b"CP03",
            b"ACPI0013",
            b"ACPI0007",
        ] {
            assert!(
                contains(&d, name),
                "{:?} missing",
                String::from_utf8_lossy(name)
            );
        }
        assert!(!contains(&d, b"CP04"));

        // EISAID("PNP0A08") = 0x080ad041, a DWordConst after _HID.
        assert!(contains(&d, b"_HID\x0c\x41\xd0\x0a\x08"));
        // EISAID("PNP0A03") as _CID, PNP0C0C (power button), PNP0501, PNP0C02.
        assert!(contains(&d, b"_CID\x0c\x41\xd0\x0a\x03"));
        assert!(contains(&d, &[0x0c, 0x41, 0xd0, 0x0c, 0x0c]));
        assert!(contains(&d, &[0x0c, 0x41, 0xd0, 0x05, 0x01]));
        assert!(contains(&d, &[0x0c, 0x41, 0xd0, 0x0c, 0x02]));

        // Name (_S5_, Package (4) { ACPI_S5_SLEEP_TYPE, 0, 0, 0 }).
        let s5 = [
            b"\x08_S5_\x12\x07\x04\x0a",
            &[ACPI_S5_SLEEP_TYPE, 0, 0, 0][..],
        ]
        .concat();
        assert!(contains(&d, &s5));

        // OperationRegion (GDRG, SystemIO, ACPI_GED_PORT, 1).
        let mut region = b"\x5b\x80GDRG\x01\x0b".to_vec();
        region.extend_from_slice(&ACPI_GED_PORT.to_le_bytes());
        region.push(0x01);
        assert!(contains(&d, &region));

        // Method (_EVT, 1, Serialized).
        let evt = d.windows(5).position(|w| w == b"_EVT\x09");
        assert!(evt.is_some(), "_EVT takes one argument");
        // Notify (\_SB.PWRB, 0x80).
        assert!(contains(&d, b"\x86\\\x2e_SB_PWRB\x0a\x80"));

        // GED interrupt: Extended Interrupt, consumer, edge, active high.
        let mut ged_irq = vec![0x89, 6, 0, 0x03, 1];
        ged_irq.extend_from_slice(&ACPI_GED_IRQ.to_le_bytes());
        assert!(contains(&d, &ged_irq));

        // ECAM reserved as a motherboard resource (Memory32Fixed).
        let mut ecam = vec![0x86, 9, 0, 1];
        ecam.extend_from_slice(&(PCI_ECAM_START as u32).to_le_bytes());
        ecam.extend_from_slice(&(PCI_ECAM_SIZE as u32).to_le_bytes());
        assert!(contains(&d, &ecam));

        // The 64-bit window: min, max, translation 0, length.
        let mut qword = Vec::new();
        for v in [MMIO64_START, MMIO64_START + MMIO64_SIZE - 1, 0, MMIO64_SIZE] {
            qword.extend_from_slice(&v.to_le_bytes());
        }
        assert!(contains(&d, &qword));
    }

    #[test]
    fn zero_cpus_rejected() {
        let mem = guest_memory();
        let err = create_acpi_tables(&mem, &config(0)).unwrap_err();
        assert!(matches!(err, AcpiError::NoCpus), "{err}");
    }

    #[test]
    fn bad_mmio64_window_rejected() {
        let mem = guest_memory();
        for (start, size) in [(MMIO64_START, 0), (u64::MAX - 10, 0x1000)] {
            let cfg = AcpiConfig {
                num_cpus: 1,
                pci_mmio64_start: start,
                pci_mmio64_size: size,
            };
            let err = create_acpi_tables(&mem, &cfg).unwrap_err();
            assert!(
                matches!(err, AcpiError::InvalidMmio64Window { .. }),
                "{err}"
            );
        }
    }

    #[test]
    fn memory_without_acpi_region_rejected() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let err = create_acpi_tables(&mem, &config(1)).unwrap_err();
        assert!(matches!(err, AcpiError::Write { .. }), "{err}");
    }

    #[test]
    fn tables_past_acpi_end_rejected() {
        let mem = guest_memory();
        let mut writer = TableWriter::new(&mem);
        let region = (ACPI_END - ACPI_START) as usize;
        writer.append("DSDT", &vec![0; region - 20]).unwrap();
        let err = writer.append("FACP", &[0; 276]).unwrap_err();
        assert!(
            matches!(err, AcpiError::TooLarge { table: "FACP", .. }),
            "{err}"
        );
        let err = writer.reserve("XSDT", usize::MAX).unwrap_err();
        assert!(matches!(err, AcpiError::TooLarge { .. }), "{err}");
    }
}
