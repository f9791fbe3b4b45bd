//! Loading a Linux kernel and initrd and writing what its boot protocol reads.
//!
//! Two formats: a bzImage entered through the 64-bit boot protocol (zero
//! page at [`ZERO_PAGE_START`]), and an uncompressed ELF vmlinux entered
//! through its PVH note (32-bit protected mode, `hvm_start_info`) or, without
//! one, at its ELF entry in 64-bit mode. The e820 map is shared by both.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{load_cmdline, Cmdline, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::layout::*;
use crate::memory::GuestMemory;

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;

/// Errors while loading the kernel and initrd.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open {what} '{path}'")]
    Open {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("'{0}' is not a Linux kernel (neither a bzImage nor an ELF vmlinux)")]
    NotAKernel(String),
    #[error("cannot load the kernel '{path}'")]
    Load {
        path: String,
        #[source]
        source: linux_loader::loader::Error,
    },
    #[error("the kernel command line is invalid")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    #[error("the initrd '{path}' ({size} bytes) does not fit in guest memory below {limit:#x}")]
    InitrdTooBig { path: String, size: u64, limit: u64 },
    #[error("cannot read the initrd '{0}'")]
    InitrdRead(String, #[source] vm_memory::GuestMemoryError),
    #[error("cannot write boot information into guest memory")]
    Configure(#[source] linux_loader::configurator::Error),
    #[error("cannot write boot information into guest memory")]
    Memory(#[source] vm_memory::GuestMemoryError),
}

/// How the vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// 64-bit long mode, `rsi` = zero page (bzImage, or ELF without PVH note).
    Linux64,
    /// 32-bit protected mode without paging, `rbx` = `hvm_start_info` (PVH).
    Pvh,
}

/// Where and how the boot vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelEntry {
    pub entry: GuestAddress,
    pub mode: EntryMode,
}

/// What to boot.
pub struct BootSpec<'a> {
    pub kernel: &'a Path,
    pub initrd: Option<&'a Path>,
    pub cmdline: &'a str,
    pub rsdp: GuestAddress,
}

/// Kernel image formats recognised by their first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KernelFormat {
    BzImage,
    Elf,
}

fn detect_format(file: &mut File) -> Option<KernelFormat> {
    let mut head = [0u8; 0x210];
    file.seek(SeekFrom::Start(0)).ok()?;
    let n = file.read(&mut head).ok()?;
    file.seek(SeekFrom::Start(0)).ok()?;
    if n >= 4 && head[..4] == *b"\x7fELF" {
        let ok = is_kernel_elf(file);
        file.seek(SeekFrom::Start(0)).ok()?;
        return ok.then_some(KernelFormat::Elf);
    }
    if n >= 0x206 && head[0x202..0x206] == *b"HdrS" {
        return Some(KernelFormat::BzImage);
    }
    None
}

/// An ELF64 x86-64 executable with a Xen (PVH) or Linux note: a vmlinux,
/// not some other program.
fn is_kernel_elf(file: &mut File) -> bool {
    let mut eh = [0u8; 64];
    if file.seek(SeekFrom::Start(0)).is_err() || file.read_exact(&mut eh).is_err() {
        return false;
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(std::array::from_fn(|i| b[o + i]));
    const ET_EXEC: u16 = 2;
    const EM_X86_64: u16 = 62;
    const PT_NOTE: u32 = 4;
    if eh[4] != 2 || eh[5] != 1 || u16_at(&eh, 16) != ET_EXEC || u16_at(&eh, 18) != EM_X86_64 {
        return false;
    }
    let (phoff, phentsize, phnum) = (u64_at(&eh, 32), u16_at(&eh, 54), u16_at(&eh, 56));
    if phentsize < 56 || phnum > 64 {
        return false;
    }
    for i in 0..u64::from(phnum) {
        let mut ph = [0u8; 56];
        let Some(off) = phoff.checked_add(i * u64::from(phentsize)) else {
            return false;
        };
        if file.seek(SeekFrom::Start(off)).is_err() || file.read_exact(&mut ph).is_err() {
            return false;
        }
        if u32_at(&ph, 0) != PT_NOTE {
            continue;
        }
        let (offset, size) = (u64_at(&ph, 8), u64_at(&ph, 32).min(64 * 1024));
        let mut notes = vec![0u8; size as usize];
        if file.seek(SeekFrom::Start(offset)).is_err() || file.read_exact(&mut notes).is_err() {
            continue;
        }
        let mut p = 0usize;
        while p + 12 <= notes.len() {
            let namesz = u32_at(&notes, p) as usize;
            let descsz = u32_at(&notes, p + 4) as usize;
            let name = notes.get(p + 12..p + 12 + namesz).unwrap_or(&[]);
            if name.starts_with(b"Xen\0") || name.starts_with(b"Linux\0") {
                return true;
            }
            p += 12 + namesz.div_ceil(4) * 4 + descsz.div_ceil(4) * 4;
        }
    }
    false
}

/// The e820 map: RAM below the EBDA, RAM from 1 MiB to the 32-bit hole, RAM
/// above 4 GiB; the BIOS area (with the ACPI tables) and ECAM reserved.
pub fn e820_map(mem: &GuestMemory) -> Vec<(u64, u64, u32)> {
    let mut map = vec![
        (0, EBDA_START, E820_RAM),
        (EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
    ];
    for region in mem.iter() {
        let start = region.start_addr().raw_value();
        let end = start + GuestMemoryRegion::len(region);
        let start = start.max(HIMEM_START);
        if end > start {
            map.push((start, end - start, E820_RAM));
        }
    }
    map.push((PCI_ECAM_START, PCI_ECAM_SIZE, E820_RESERVED));
    map
}

fn open(what: &'static str, path: &Path) -> Result<File, BootError> {
    File::open(path).map_err(|source| BootError::Open {
        what,
        path: path.display().to_string(),
        source,
    })
}

/// Checks that `path` names a readable kernel image (before any VM exists).
pub fn check_kernel(path: &Path) -> Result<(), BootError> {
    let mut f = open("kernel", path)?;
    detect_format(&mut f)
        .map(|_| ())
        .ok_or_else(|| BootError::NotAKernel(path.display().to_string()))
}

/// Loads kernel, initrd and command line and writes the boot structures.
pub fn load_kernel(mem: &GuestMemory, spec: &BootSpec) -> Result<KernelEntry, BootError> {
    let kpath = spec.kernel.display().to_string();
    let mut kernel = open("kernel", spec.kernel)?;
    let format = detect_format(&mut kernel).ok_or_else(|| BootError::NotAKernel(kpath.clone()))?;
    let load_err = |source| BootError::Load {
        path: kpath.clone(),
        source,
    };
    let loaded = match format {
        KernelFormat::BzImage => {
            BzImage::load(mem, None, &mut kernel, Some(GuestAddress(HIMEM_START)))
                .map_err(load_err)?
        }
        KernelFormat::Elf => {
            Elf::load(mem, None, &mut kernel, Some(GuestAddress(HIMEM_START))).map_err(load_err)?
        }
    };

    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).map_err(BootError::Cmdline)?;
    cmdline
        .insert_str(spec.cmdline)
        .map_err(BootError::Cmdline)?;
    load_cmdline(mem, GuestAddress(CMDLINE_START), &cmdline).map_err(load_err)?;
    let cmdline_len = spec.cmdline.len() as u32 + 1;

    let initrd_max = loaded
        .setup_header
        .map(|h| u64::from(h.initrd_addr_max))
        .filter(|&m| m != 0)
        .unwrap_or(0x37ff_ffff);
    let initrd = match spec.initrd {
        Some(path) => Some(load_initrd(mem, path, initrd_max, loaded.kernel_end)?),
        None => None,
    };

    match (format, loaded.pvh_boot_cap) {
        (KernelFormat::Elf, PvhBootCapability::PvhEntryPresent(entry)) => {
            write_pvh_info(mem, spec.rsdp, initrd)?;
            Ok(KernelEntry {
                entry,
                mode: EntryMode::Pvh,
            })
        }
        _ => {
            let mut params = boot_params::default();
            if let Some(hdr) = loaded.setup_header {
                params.hdr = hdr;
            } else {
                params.hdr.boot_flag = 0xaa55;
                params.hdr.header = 0x5372_6448; // "HdrS"
                params.hdr.kernel_alignment = 0x0100_0000;
            }
            params.hdr.type_of_loader = 0xff;
            params.hdr.cmd_line_ptr = CMDLINE_START as u32;
            params.hdr.cmdline_size = cmdline_len;
            if let Some((addr, size)) = initrd {
                params.hdr.ramdisk_image = addr.raw_value() as u32;
                params.hdr.ramdisk_size = size as u32;
            }
            params.acpi_rsdp_addr = spec.rsdp.raw_value();
            let map = e820_map(mem);
            for (i, &(addr, size, type_)) in map.iter().enumerate().take(params.e820_table.len()) {
                params.e820_table[i] = boot_e820_entry {
                    addr,
                    size,
                    r#type: type_,
                };
            }
            params.e820_entries = map.len().min(params.e820_table.len()) as u8;
            LinuxBootConfigurator::write_bootparams::<GuestMemory>(
                &BootParams::new(&params, GuestAddress(ZERO_PAGE_START)),
                mem,
            )
            .map_err(BootError::Configure)?;
            // bzImage: the 64-bit entry is 0x200 past the protected-mode code.
            let entry = match format {
                KernelFormat::BzImage => loaded.kernel_load.unchecked_add(0x200),
                KernelFormat::Elf => loaded.kernel_load,
            };
            Ok(KernelEntry {
                entry,
                mode: EntryMode::Linux64,
            })
        }
    }
}

/// Places the initrd at the highest page-aligned address below `limit` and
/// the 32-bit RAM end, above the kernel.
fn load_initrd(
    mem: &GuestMemory,
    path: &Path,
    limit: u64,
    kernel_end: u64,
) -> Result<(GuestAddress, u64), BootError> {
    let mut file = open("initrd", path)?;
    let size = file
        .metadata()
        .map_err(|source| BootError::Open {
            what: "initrd",
            path: path.display().to_string(),
            source,
        })?
        .len();
    let low_ram_end = mem
        .iter()
        .map(|r| r.start_addr().raw_value() + GuestMemoryRegion::len(r))
        .filter(|&end| end <= MMIO32_HOLE_START)
        .max()
        .unwrap_or(0);
    let top = low_ram_end.min(limit.saturating_add(1));
    let too_big = || BootError::InitrdTooBig {
        path: path.display().to_string(),
        size,
        limit: top,
    };
    let start = top.checked_sub(size).ok_or_else(too_big)? & !0xfff;
    if start < kernel_end.max(HIMEM_START) {
        return Err(too_big());
    }
    mem.read_volatile_from(GuestAddress(start), &mut file, size as usize)
        .map_err(|e| BootError::InitrdRead(path.display().to_string(), e))?;
    Ok((GuestAddress(start), size))
}

fn write_pvh_info(
    mem: &GuestMemory,
    rsdp: GuestAddress,
    initrd: Option<(GuestAddress, u64)>,
) -> Result<(), BootError> {
    let map: Vec<hvm_memmap_table_entry> = e820_map(mem)
        .into_iter()
        .map(|(addr, size, type_)| hvm_memmap_table_entry {
            addr,
            size,
            type_,
            reserved: 0,
        })
        .collect();
    let info_size = std::mem::size_of::<hvm_start_info>() as u64;
    let modlist_addr = GuestAddress(PVH_INFO_START + info_size);
    let memmap_addr = modlist_addr.unchecked_add(std::mem::size_of::<hvm_modlist_entry>() as u64);
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        rsdp_paddr: rsdp.raw_value(),
        memmap_paddr: memmap_addr.raw_value(),
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    let mut params = BootParams::new(&info, GuestAddress(PVH_INFO_START));
    if let Some((addr, size)) = initrd {
        info.nr_modules = 1;
        info.modlist_paddr = modlist_addr.raw_value();
        params = BootParams::new(&info, GuestAddress(PVH_INFO_START));
        let module = hvm_modlist_entry {
            paddr: addr.raw_value(),
            size,
            ..Default::default()
        };
        params.set_modules(&[module], modlist_addr);
    }
    params.set_sections(&map, memmap_addr);
    PvhBootConfigurator::write_bootparams::<GuestMemory>(&params, mem)
        .map_err(BootError::Configure)?;
    // The checked write above leaves the memory map; make sure it is intact.
    mem.write_obj(info, GuestAddress(PVH_INFO_START))
        .map_err(BootError::Memory)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;

    #[test]
    fn e820_has_low_ram_reserved_bios_and_ram_around_the_hole() {
        let mem = create_guest_memory(4 << 30).unwrap();
        let map = e820_map(&mem);
        assert_eq!(map[0], (0, EBDA_START, E820_RAM));
        assert_eq!(map[1].2, E820_RESERVED);
        assert!(map.contains(&(HIMEM_START, MMIO32_HOLE_START - HIMEM_START, E820_RAM)));
        assert!(map.contains(&(RAM_64BIT_START, (4 << 30) - MMIO32_HOLE_START, E820_RAM)));
        assert!(map.contains(&(PCI_ECAM_START, PCI_ECAM_SIZE, E820_RESERVED)));
        let ram: u64 = map.iter().filter(|e| e.2 == E820_RAM).map(|e| e.1).sum();
        assert_eq!(ram, (4 << 30) - (HIMEM_START - EBDA_START));
    }

    fn temp_file(name: &str, content: &[u8]) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("pv-boot-{}-{name}", std::process::id()));
        std::fs::write(&p, content).unwrap();
        p
    }

    #[test]
    fn rejects_a_file_that_is_not_a_kernel() {
        let p = temp_file(
            "notakernel",
            b"hello, I am a text file, not a kernel at all",
        );
        let err = check_kernel(&p).unwrap_err();
        assert!(err.to_string().contains("is not a Linux kernel"), "{err}");
        let _ = std::fs::remove_file(p);
        assert!(matches!(
            check_kernel(Path::new("/nonexistent/vmlinuz")),
            Err(BootError::Open { .. })
        ));
    }

    /// A minimal bzImage: a setup header (protocol 2.15, loaded high) and a
    /// 4 KiB payload of 0xAB.
    fn fake_bzimage() -> Vec<u8> {
        let mut v = vec![0u8; 5 * 512];
        v[0x1f1] = 4; // setup_sects
        v[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        v[0x202..0x206].copy_from_slice(b"HdrS");
        v[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        v[0x211] = 1; // LOADED_HIGH
        v[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
        v[0x22c..0x230].copy_from_slice(&0x37ff_ffffu32.to_le_bytes());
        v.extend(std::iter::repeat_n(0xab, 4096));
        v
    }

    #[test]
    fn bzimage_zero_page_has_cmdline_initrd_e820_and_rsdp() {
        let mem = create_guest_memory(128 << 20).unwrap();
        let kernel = temp_file("fakebz", &fake_bzimage());
        let initrd = temp_file("fakerd", &[0x5a; 3000]);
        let entry = load_kernel(
            &mem,
            &BootSpec {
                kernel: &kernel,
                initrd: Some(&initrd),
                cmdline: "console=ttyS0 quiet",
                rsdp: GuestAddress(ACPI_START),
            },
        )
        .unwrap();
        assert_eq!(entry.mode, EntryMode::Linux64);
        assert_eq!(entry.entry, GuestAddress(HIMEM_START + 0x200));
        let payload: u8 = mem.read_obj(GuestAddress(HIMEM_START)).unwrap();
        assert_eq!(payload, 0xab);
        let zp: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        let hdr = zp.hdr;
        assert_eq!(hdr.type_of_loader, 0xff);
        assert_eq!(hdr.cmd_line_ptr as u64, CMDLINE_START);
        let cmdline_size = hdr.cmdline_size;
        assert_eq!(cmdline_size, 20, "length with the NUL");
        let mut cmd = [0u8; 20];
        mem.read_slice(&mut cmd, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&cmd, b"console=ttyS0 quiet\0");
        let ramdisk_size = hdr.ramdisk_size;
        assert_eq!(ramdisk_size, 3000);
        let rd: u8 = mem
            .read_obj(GuestAddress(u64::from(hdr.ramdisk_image)))
            .unwrap();
        assert_eq!(rd, 0x5a);
        let rsdp = zp.acpi_rsdp_addr;
        assert_eq!(rsdp, ACPI_START);
        let n = usize::from(zp.e820_entries);
        assert_eq!(n, e820_map(&mem).len());
        let first = zp.e820_table[0];
        let (addr, size, kind) = (first.addr, first.size, first.r#type);
        assert_eq!((addr, size, kind), (0, EBDA_START, E820_RAM));
        let _ = std::fs::remove_file(kernel);
        let _ = std::fs::remove_file(initrd);
    }

    #[test]
    fn initrd_goes_high_and_page_aligned() {
        let mem = create_guest_memory(64 << 20).unwrap();
        let p = temp_file("initrd", &[0x5a; 10000]);
        let (addr, size) = load_initrd(&mem, &p, 0x37ff_ffff, 0x20_0000).unwrap();
        assert_eq!(size, 10000);
        assert_eq!(addr.raw_value() & 0xfff, 0);
        assert!(addr.raw_value() + size <= 64 << 20);
        assert!(addr.raw_value() + size > (64 << 20) - 0x2000);
        let b: u8 = mem.read_obj(addr.unchecked_add(9999)).unwrap();
        assert_eq!(b, 0x5a);
        // An initrd bigger than RAM is refused with a clear error.
        let small = create_guest_memory(4 << 20).unwrap();
        let big = temp_file("bigrd", &vec![0u8; 5 << 20]);
        assert!(matches!(
            load_initrd(&small, &big, 0x37ff_ffff, 0x20_0000),
            Err(BootError::InitrdTooBig { .. })
        ));
        let _ = std::fs::remove_file(p);
        let _ = std::fs::remove_file(big);
    }
}
