//! The shared libraries a host binary needs at run time (`ldd`), and its ELF interpreter, so
//! that the binary can be carried into the L1 machine's initramfs at the same paths.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use thiserror::Error;

/// Errors finding a binary's libraries.
#[derive(Debug, Error)]
pub enum LddError {
    #[error("cannot run ldd (is libc-bin installed?)")]
    Spawn(#[source] io::Error),
    #[error("cannot read {path}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{binary}: shared libraries not found: {missing}")]
    Missing { binary: PathBuf, missing: String },
    #[error("ldd {binary} failed: {message}")]
    Failed { binary: PathBuf, message: String },
}

/// What `ldd` printed, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LddOutput {
    /// Absolute paths of libraries and of the dynamic loader, in ldd's order.
    pub libraries: Vec<PathBuf>,
    /// Sonames ldd reported as "not found".
    pub missing: Vec<String>,
}

/// Parses `ldd` output. Virtual objects without a path (linux-vdso) are skipped; a static
/// binary ("statically linked", "not a dynamic executable") has no libraries.
pub fn parse_ldd(output: &str) -> LddOutput {
    let mut out = LddOutput::default();
    for line in output.lines() {
        let line = line.trim();
        if let Some((soname, rest)) = line.split_once("=>") {
            let rest = rest.trim();
            if rest.starts_with("not found") {
                out.missing.push(soname.trim().to_string());
            } else if let Some(path) = rest
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/'))
            {
                out.libraries.push(PathBuf::from(path));
            }
        } else if let Some(path) = line
            .split_whitespace()
            .next()
            .filter(|p| p.starts_with('/'))
        {
            out.libraries.push(PathBuf::from(path));
        }
    }
    out
}

/// The PT_INTERP path of an ELF64 little-endian executable; None for static binaries and
/// anything else.
pub fn elf_interpreter(elf: &[u8]) -> Option<PathBuf> {
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        return None;
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(elf.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(elf.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(elf.get(o..o + 8)?.try_into().ok()?));
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    for i in 0..phnum {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if u32_at(ph)? == 3 {
            let off = usize::try_from(u64_at(ph + 8)?).ok()?;
            let size = usize::try_from(u64_at(ph + 32)?).ok()?;
            let raw = elf.get(off..off.checked_add(size)?)?;
            let path = raw.split(|&b| b == 0).next()?;
            return std::str::from_utf8(path).ok().map(PathBuf::from);
        }
    }
    None
}

/// Every file besides `binary` itself that it needs to start: the libraries `ldd` lists and
/// the ELF interpreter, as absolute host paths (deduplicated, in a stable order).
pub fn runtime_files(binary: &Path) -> Result<Vec<PathBuf>, LddError> {
    let elf = fs::read(binary).map_err(|source| LddError::Read {
        path: binary.to_path_buf(),
        source,
    })?;
    let interp = elf_interpreter(&elf);
    let mut files = Vec::new();
    if interp.is_some() {
        let out = Command::new("ldd")
            .arg(binary)
            .stdin(Stdio::null())
            .output()
            .map_err(LddError::Spawn)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(LddError::Failed {
                binary: binary.to_path_buf(),
                message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        let parsed = parse_ldd(&stdout);
        if !parsed.missing.is_empty() {
            return Err(LddError::Missing {
                binary: binary.to_path_buf(),
                missing: parsed.missing.join(", "),
            });
        }
        files = parsed.libraries;
    }
    files.extend(interp);
    let mut seen = BTreeSet::new();
    files.retain(|f| seen.insert(f.clone()));
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DYNAMIC: &str = "\tlinux-vdso.so.1 (0x00007ffd3b5f2000)
\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f0e2d1c4000)
\tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f0e2d0e5000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0e2cf04000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f0e2d9a9000)
";

    #[test]
    fn parses_dynamic_binary() {
        let out = parse_ldd(DYNAMIC);
        assert!(out.missing.is_empty());
        let libs: Vec<_> = out.libraries.iter().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(
            libs,
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libm.so.6",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2",
            ]
        );
    }

    #[test]
    fn parses_missing_and_static() {
        let out = parse_ldd(
            "\tlibvirglrenderer.so.1 => not found\n\tlibc.so.6 => /lib/libc.so.6 (0x1)\n",
        );
        assert_eq!(out.missing, ["libvirglrenderer.so.1"]);
        assert_eq!(out.libraries, [PathBuf::from("/lib/libc.so.6")]);
        assert_eq!(parse_ldd("\tstatically linked\n"), LddOutput::default());
        assert_eq!(
            parse_ldd("\tnot a dynamic executable\n"),
            LddOutput::default()
        );
    }

    #[test]
    fn interpreter_of_synthetic_elf() {
        let interp = b"/lib64/ld-linux-x86-64.so.2\0";
        let mut elf = vec![0u8; 64 + 56];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        elf[64..68].copy_from_slice(&3u32.to_le_bytes());
        elf[72..80].copy_from_slice(&120u64.to_le_bytes());
        elf[96..104].copy_from_slice(&(interp.len() as u64).to_le_bytes());
        elf.extend_from_slice(interp);
        assert_eq!(
            elf_interpreter(&elf),
            Some(PathBuf::from("/lib64/ld-linux-x86-64.so.2"))
        );
        elf[64..68].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(elf_interpreter(&elf), None);
        assert_eq!(elf_interpreter(b"#!/bin/sh\n"), None);
    }

    #[test]
    fn host_shell_has_libc_and_interpreter() {
        // /bin/sh is dynamically linked on every Debian host.
        let files = runtime_files(Path::new("/bin/sh")).unwrap();
        assert!(files
            .iter()
            .any(|f| f.to_string_lossy().contains("libc.so")));
        assert!(files
            .iter()
            .any(|f| f.to_string_lossy().contains("ld-linux")));
    }
}
