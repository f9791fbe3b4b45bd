//! A minimal ELF reader for x86-64 shared objects and executables: the program interpreter
//! (`PT_INTERP`) and the dynamic section's `DT_NEEDED`, `DT_SONAME` and `DT_RUNPATH`/`DT_RPATH`
//! entries. Enough to resolve what a program needs at run time without running the host's
//! `ldd` (which would answer for the host, not for the packages being assembled).
//!
//! Only the headers, the program headers, the dynamic segment and its string table are read,
//! so a 130 MB libLLVM costs a few kilobytes of reading. Every offset and size comes from the
//! file and is bounds-checked.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
const DT_STRSZ: u64 = 10;
const DT_SONAME: u64 = 14;
const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;
const EM_X86_64: u16 = 62;
/// Refuse absurd header tables and string tables (a corrupt file, not a real library).
const MAX_TABLE: u64 = 16 << 20;

/// Errors reading an ELF file.
#[derive(Debug, Error)]
pub enum ElfError {
    #[error("cannot read {path}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is not an x86-64 ELF file")]
    NotElf { path: PathBuf },
    #[error("{path} is a malformed ELF file: {what}")]
    Malformed { path: PathBuf, what: &'static str },
}

/// What the dynamic loader needs to know about one file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DynamicInfo {
    /// `PT_INTERP`, e.g. `/lib64/ld-linux-x86-64.so.2` (executables only).
    pub interpreter: Option<String>,
    /// `DT_NEEDED` sonames, in order.
    pub needed: Vec<String>,
    /// `DT_SONAME`.
    pub soname: Option<String>,
    /// `DT_RUNPATH` (or the older `DT_RPATH`).
    pub runpath: Option<String>,
}

/// Whether `path` starts with the ELF magic.
pub fn is_elf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    File::open(path)
        .and_then(|f| f.read_exact_at(&mut magic, 0))
        .is_ok()
        && &magic == b"\x7fELF"
}

struct Reader<'a> {
    file: File,
    path: &'a Path,
    len: u64,
}

impl Reader<'_> {
    fn bytes(&self, offset: u64, size: u64) -> Result<Vec<u8>, ElfError> {
        if size > MAX_TABLE || offset.checked_add(size).is_none_or(|end| end > self.len) {
            return Err(self.malformed("a table lies outside the file"));
        }
        let mut buf = vec![0u8; size as usize];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(|source| ElfError::Io {
                path: self.path.to_path_buf(),
                source,
            })?;
        Ok(buf)
    }

    fn malformed(&self, what: &'static str) -> ElfError {
        ElfError::Malformed {
            path: self.path.to_path_buf(),
            what,
        }
    }
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

/// The NUL-terminated string at `offset` of `table`.
fn string_at(table: &[u8], offset: u64) -> Option<String> {
    let start = usize::try_from(offset).ok()?;
    let rest = table.get(start..)?;
    let end = rest.iter().position(|&b| b == 0)?;
    Some(String::from_utf8_lossy(&rest[..end]).into_owned())
}

/// Reads the interpreter and dynamic entries of an x86-64 ELF64 file. A static executable
/// has neither; a file that is not ELF is [`ElfError::NotElf`].
pub fn dynamic_info(path: &Path) -> Result<DynamicInfo, ElfError> {
    let io_err = |source| ElfError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let len = file.metadata().map_err(io_err)?.len();
    let r = Reader { file, path, len };
    if len < 64 {
        return Err(ElfError::NotElf {
            path: path.to_path_buf(),
        });
    }
    let eh = r.bytes(0, 64)?;
    // ELFCLASS64, little endian, x86-64.
    if &eh[..4] != b"\x7fELF" || eh[4] != 2 || eh[5] != 1 || u16_at(&eh, 0x12) != EM_X86_64 {
        return Err(ElfError::NotElf {
            path: path.to_path_buf(),
        });
    }
    let phoff = u64_at(&eh, 0x20);
    let phentsize = u64::from(u16_at(&eh, 0x36));
    let phnum = u64::from(u16_at(&eh, 0x38));
    if phnum > 0 && phentsize < 56 {
        return Err(r.malformed("program header entries are too small"));
    }
    let phdrs = r.bytes(phoff, phentsize * phnum)?;
    let mut info = DynamicInfo::default();
    let mut loads = Vec::new(); // (vaddr, filesz, offset)
    let mut dynamic = None; // (offset, filesz)
    for i in 0..phnum as usize {
        let ph = &phdrs[i * phentsize as usize..];
        let (ty, offset, vaddr, filesz) =
            (u32_at(ph, 0), u64_at(ph, 8), u64_at(ph, 16), u64_at(ph, 32));
        match ty {
            PT_LOAD => loads.push((vaddr, filesz, offset)),
            PT_DYNAMIC => dynamic = Some((offset, filesz)),
            PT_INTERP => {
                let raw = r.bytes(offset, filesz)?;
                info.interpreter = string_at(&raw, 0).filter(|s| !s.is_empty());
            }
            _ => {}
        }
    }
    let Some((dyn_off, dyn_size)) = dynamic else {
        return Ok(info);
    };
    let entries = r.bytes(dyn_off, dyn_size - dyn_size % 16)?;
    let mut tags = Vec::new();
    let (mut strtab, mut strsz) = (None, None);
    for e in entries.chunks_exact(16) {
        let (tag, val) = (u64_at(e, 0), u64_at(e, 8));
        match tag {
            DT_NULL => break,
            DT_STRTAB => strtab = Some(val),
            DT_STRSZ => strsz = Some(val),
            DT_NEEDED | DT_SONAME | DT_RPATH | DT_RUNPATH => tags.push((tag, val)),
            _ => {}
        }
    }
    if tags.is_empty() {
        return Ok(info);
    }
    let (Some(strtab), Some(strsz)) = (strtab, strsz) else {
        return Err(r.malformed("dynamic section without a string table"));
    };
    // DT_STRTAB is an address: find the loaded segment holding it.
    let str_off = loads
        .iter()
        .find(|(vaddr, filesz, _)| strtab >= *vaddr && strtab - vaddr < *filesz)
        .map(|(vaddr, _, offset)| strtab - vaddr + offset)
        .ok_or_else(|| r.malformed("the string table is in no loaded segment"))?;
    let table = r.bytes(str_off, strsz.min(len.saturating_sub(str_off)))?;
    for (tag, val) in tags {
        let s = string_at(&table, val)
            .ok_or_else(|| r.malformed("a name lies outside the string table"))?;
        match tag {
            DT_NEEDED => info.needed.push(s),
            DT_SONAME => info.soname = Some(s),
            DT_RUNPATH => info.runpath = Some(s),
            _ => {
                info.runpath.get_or_insert(s);
            }
        }
    }
    Ok(info)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A synthetic ELF64 x86-64 file: one PT_LOAD at vaddr 0x1000 covering the file from
    /// offset 0, a PT_INTERP and a PT_DYNAMIC whose strings are `strings`.
    pub(crate) fn synthetic_elf(
        interp: Option<&str>,
        needed: &[&str],
        soname: Option<&str>,
    ) -> Vec<u8> {
        let mut strtab = vec![0u8];
        let mut add = |s: &str| {
            let off = strtab.len() as u64;
            strtab.extend_from_slice(s.as_bytes());
            strtab.push(0);
            off
        };
        let mut dyns: Vec<(u64, u64)> = needed.iter().map(|n| (DT_NEEDED, add(n))).collect();
        if let Some(s) = soname {
            dyns.push((DT_SONAME, add(s)));
        }
        let interp_bytes: Vec<u8> = interp
            .map(|i| [i.as_bytes(), b"\0"].concat())
            .unwrap_or_default();
        let phnum = 2 + u64::from(interp.is_some());
        let ph_off = 64u64;
        let interp_off = ph_off + 56 * phnum;
        let str_off = interp_off + interp_bytes.len() as u64;
        let dyn_off = (str_off + strtab.len() as u64 + 7) & !7;
        dyns.push((DT_STRTAB, 0x1000 + str_off));
        dyns.push((DT_STRSZ, strtab.len() as u64));
        dyns.push((DT_NULL, 0));
        let total = dyn_off + 16 * dyns.len() as u64;

        let mut f = vec![0u8; 64];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[6] = 1;
        f[0x10..0x12].copy_from_slice(&3u16.to_le_bytes());
        f[0x12..0x14].copy_from_slice(&EM_X86_64.to_le_bytes());
        f[0x20..0x28].copy_from_slice(&ph_off.to_le_bytes());
        f[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        f[0x38..0x3a].copy_from_slice(&(phnum as u16).to_le_bytes());
        let ph = |ty: u32, off: u64, vaddr: u64, size: u64| {
            let mut p = vec![0u8; 56];
            p[..4].copy_from_slice(&ty.to_le_bytes());
            p[8..16].copy_from_slice(&off.to_le_bytes());
            p[16..24].copy_from_slice(&vaddr.to_le_bytes());
            p[32..40].copy_from_slice(&size.to_le_bytes());
            p
        };
        f.extend(ph(PT_LOAD, 0, 0x1000, total));
        f.extend(ph(
            PT_DYNAMIC,
            dyn_off,
            0x1000 + dyn_off,
            16 * dyns.len() as u64,
        ));
        if interp.is_some() {
            f.extend(ph(
                PT_INTERP,
                interp_off,
                0x1000 + interp_off,
                interp_bytes.len() as u64,
            ));
        }
        f.extend(&interp_bytes);
        f.extend(&strtab);
        f.resize(dyn_off as usize, 0);
        for (tag, val) in dyns {
            f.extend(tag.to_le_bytes());
            f.extend(val.to_le_bytes());
        }
        f
    }

    fn write(name: &str, data: &[u8]) -> PathBuf {
        let path = std::env::temp_dir().join(format!("pv-elf-{name}-{}", std::process::id()));
        std::fs::write(&path, data).unwrap();
        path
    }

    #[test]
    fn reads_interpreter_needed_and_soname() {
        let elf = synthetic_elf(
            Some("/lib64/ld-linux-x86-64.so.2"),
            &["libvulkan.so.1", "libc.so.6"],
            Some("libfoo.so.1"),
        );
        let path = write("full", &elf);
        let info = dynamic_info(&path).unwrap();
        assert_eq!(
            info.interpreter.as_deref(),
            Some("/lib64/ld-linux-x86-64.so.2")
        );
        assert_eq!(info.needed, ["libvulkan.so.1", "libc.so.6"]);
        assert_eq!(info.soname.as_deref(), Some("libfoo.so.1"));
        assert!(is_elf(&path));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn rejects_garbage_and_truncation() {
        let text = write(
            "text",
            b"#!/bin/sh\necho not an ELF file at all, just text\n",
        );
        assert!(matches!(dynamic_info(&text), Err(ElfError::NotElf { .. })));
        assert!(!is_elf(&text));
        std::fs::remove_file(&text).unwrap();

        let elf = synthetic_elf(None, &["libc.so.6"], None);
        for cut in [70, 130, elf.len() - 20] {
            let path = write("cut", &elf[..cut]);
            assert!(
                matches!(dynamic_info(&path), Err(ElfError::Malformed { .. })),
                "cut at {cut}"
            );
            std::fs::remove_file(&path).unwrap();
        }
        let mut huge = elf.clone();
        huge[0x38..0x3a].copy_from_slice(&u16::MAX.to_le_bytes());
        let path = write("huge", &huge);
        assert!(dynamic_info(&path).is_err());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn reads_a_real_host_binary() {
        // The test binary itself: dynamically linked against libc.
        let me = std::env::current_exe().unwrap();
        let info = dynamic_info(&me).unwrap();
        assert!(
            info.needed.iter().any(|n| n.starts_with("libc.so")),
            "{info:?}"
        );
        assert!(info.interpreter.is_some());
    }
}
