//! The x86_64 guest physical address map and port assignments.
//!
//! ```text
//! 0x0000_0000  real-mode IVT/BDA (RAM)
//! 0x0000_0500  GDT                 0x0000_0520 IDT
//! 0x0000_6000  PVH start info      0x0000_7000 zero page (boot_params)
//! 0x0000_9000  page tables (PML4, PDPT, 4 x PD: identity map of 4 GiB)
//! 0x0002_0000  kernel command line (up to 64 KiB)
//! 0x0009_fc00  EBDA (reserved)     0x000e_0000 ACPI tables (RSDP first)
//! 0x000f_fff0  reset vector: a stub that asks the VMM for a machine reset
//! 0x0010_0000  kernel; RAM continues to min(size, 3 GiB)
//! 0xc000_0000  PCI 32-bit MMIO window (512 MiB)
//! 0xe000_0000  PCI ECAM (MMCONFIG), one bus
//! 0xfec0_0000  IOAPIC              0xfee0_0000 local APIC
//! 0x1_0000_0000 RAM above 4 GiB, then the PCI 64-bit MMIO window
//!              (128 GiB from a 64 GiB boundary: 64-bit prefetchable BARs
//!              such as virtio shared memory, up to 64 GiB each)
//! ```

/// Global descriptor table.
pub const GDT_START: u64 = 0x500;
/// Interrupt descriptor table (empty).
pub const IDT_START: u64 = 0x520;
/// PVH `hvm_start_info` and its memory map.
pub const PVH_INFO_START: u64 = 0x6000;
/// Linux zero page.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Boot page tables: PML4, then PDPT, then four page directories.
pub const PML4_START: u64 = 0x9000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Longest command line accepted (including the NUL).
pub const CMDLINE_MAX_SIZE: usize = 0x10000;
/// Start of the extended BIOS data area; RAM below it is usable.
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables region; RSDP at its start.
pub const ACPI_START: u64 = 0xe0000;
/// End of the ACPI tables region.
pub const ACPI_END: u64 = 0xf_0000;
/// The x86 reset vector (F000:FFF0): where a CPU starts after RESET/INIT.
pub const RESET_VECTOR: u64 = 0xf_fff0;
/// Where the kernel is loaded (1 MiB).
pub const HIMEM_START: u64 = 0x10_0000;

/// Start of the 32-bit MMIO hole; RAM below 4 GiB ends here.
pub const MMIO32_HOLE_START: u64 = 0xc000_0000;
/// PCI 32-bit BAR window.
pub const PCI_MMIO32_START: u64 = 0xc000_0000;
pub const PCI_MMIO32_SIZE: u64 = 0x2000_0000;
/// PCI Express enhanced configuration access (ECAM) for bus 0.
pub const PCI_ECAM_START: u64 = 0xe000_0000;
/// One bus: 32 devices x 8 functions x 4 KiB.
pub const PCI_ECAM_SIZE: u64 = 0x10_0000;
/// IOAPIC registers.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC registers.
pub const LAPIC_START: u64 = 0xfee0_0000;
/// First address above the 32-bit hole.
pub const RAM_64BIT_START: u64 = 0x1_0000_0000;
/// Size of the PCI 64-bit BAR window (placed above RAM, see
/// [`pci_mmio64_start`]); the DSDT's host bridge `_CRS` declares it, so the
/// guest keeps the BARs the VMM puts there.
pub const PCI_MMIO64_SIZE: u64 = 0x20_0000_0000;

/// The 64-bit PCI window: above all RAM, 64 GiB aligned.
pub fn pci_mmio64_start(ram_top: u64) -> u64 {
    let align = 0x10_0000_0000u64;
    ram_top.max(RAM_64BIT_START).div_ceil(align) * align
}

/// Legacy COM1.
pub const SERIAL_PORT: u16 = 0x3f8;
/// COM1 interrupt (IOAPIC pin / GSI).
pub const SERIAL_IRQ: u32 = 4;
/// PCI configuration mechanism #1 (0xcf8 address, 0xcfc data).
pub const PCI_CONFIG_IO_PORT: u16 = 0xcf8;
pub const PCI_CONFIG_IO_SIZE: u64 = 8;
/// ACPI hardware-reduced sleep control register (1 byte, FADT SLEEP_CONTROL_REG).
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x600;
/// ACPI sleep status register (1 byte, FADT SLEEP_STATUS_REG).
pub const ACPI_SLEEP_STATUS_PORT: u16 = 0x601;
/// ACPI reset register (1 byte, FADT RESET_REG).
pub const ACPI_RESET_PORT: u16 = 0x602;
/// Value the guest writes to [`ACPI_RESET_PORT`] to reset.
pub const ACPI_RESET_VALUE: u8 = 0x1;
/// Sleep type value of \_S5 (soft off) in the DSDT.
pub const ACPI_S5_SLEEP_TYPE: u8 = 5;
/// Generic Event Device register (1 byte: bit 0 = power button pressed).
pub const ACPI_GED_PORT: u16 = 0x604;
/// GED interrupt (IOAPIC pin / GSI), edge triggered, active high.
pub const ACPI_GED_IRQ: u32 = 9;
/// Number of IOAPIC pins.
pub const IOAPIC_PINS: u32 = 24;
/// First GSI handed out for MSI routes (above the IOAPIC pins).
pub const MSI_GSI_START: u32 = 24;
