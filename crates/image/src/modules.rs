//! Kernel modules without modules.dep: reading `.modinfo` from (xz-compressed) module ELF
//! files, indexing a kernel's module tree, and resolving a dependency-first load order.
//!
//! Debian's kernel packages ship no modules.dep, so dependencies are read from each module's
//! `depends=` entry. Module names treat '-' and '_' alike (`kvm-amd.ko` is `kvm_amd`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::cpio::{CpioError, Initramfs};

/// Where [`add_to_initramfs`] puts modules, and the name of the load-order list in it.
pub const MODULES_DIR: &str = "/lib/modules";
/// The file listing the module file names in load order, one per line.
pub const LOAD_LIST: &str = "/lib/modules/load.list";

/// Errors of module reading and dependency resolution.
#[derive(Debug, Error)]
pub enum ModuleError {
    #[error("cannot read {path}")]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot decompress {path}")]
    Decompress { path: PathBuf, source: io::Error },
    #[error("unsupported module compression: {0}")]
    UnsupportedCompression(PathBuf),
    #[error("{what}: not an ELF64 little-endian file")]
    NotElf { what: String },
    #[error("{what}: malformed ELF: {detail}")]
    BadElf { what: String, detail: &'static str },
    #[error("{what}: no .modinfo section")]
    NoModinfo { what: String },
    #[error("kernel module {module:?} not found (needed by {needed_by})")]
    Missing { module: String, needed_by: String },
    #[error("kernel module dependency cycle through {0:?}")]
    Cycle(String),
    #[error("cannot add modules to the initramfs")]
    Initramfs(#[from] CpioError),
}

/// The canonical form of a module name: no directory, no `.ko*` suffix, '-' → '_'.
pub fn normalize_name(name: &str) -> String {
    let base = name.rsplit('/').next().unwrap_or(name);
    let base = match base.find(".ko") {
        Some(i) => &base[..i],
        None => base,
    };
    base.replace('-', "_")
}

/// The key=value entries of a module's `.modinfo` section, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModInfo {
    pub entries: Vec<(String, String)>,
}

impl ModInfo {
    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The module's hard dependencies (`depends=`), normalized; empty when it has none.
    pub fn depends(&self) -> Vec<String> {
        self.get("depends")
            .map(|d| {
                d.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(normalize_name)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Reads the `.modinfo` section of an (uncompressed) ELF64 little-endian module.
/// `what` names the module in errors.
pub fn parse_modinfo(elf: &[u8], what: &str) -> Result<ModInfo, ModuleError> {
    let bad = |detail| ModuleError::BadElf {
        what: what.to_string(),
        detail,
    };
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        return Err(ModuleError::NotElf {
            what: what.to_string(),
        });
    }
    let shoff = usize::try_from(read_u64(elf, 0x28).ok_or_else(|| bad("header"))?)
        .map_err(|_| bad("section header offset"))?;
    let shentsize = usize::from(read_u16(elf, 0x3a).ok_or_else(|| bad("header"))?);
    let shnum = usize::from(read_u16(elf, 0x3c).ok_or_else(|| bad("header"))?);
    let shstrndx = usize::from(read_u16(elf, 0x3e).ok_or_else(|| bad("header"))?);
    if shentsize < 64 || shnum == 0 || shstrndx >= shnum {
        return Err(bad("section header table"));
    }
    let section = |i: usize| -> Result<(u32, &[u8]), ModuleError> {
        let base = shoff
            .checked_add(
                i.checked_mul(shentsize)
                    .ok_or_else(|| bad("section index"))?,
            )
            .ok_or_else(|| bad("section header offset"))?;
        let name = read_u32(elf, base).ok_or_else(|| bad("truncated section header"))?;
        let sh_type = read_u32(elf, base + 4).ok_or_else(|| bad("truncated section header"))?;
        let offset = read_u64(elf, base + 24).ok_or_else(|| bad("truncated section header"))?;
        let size = read_u64(elf, base + 32).ok_or_else(|| bad("truncated section header"))?;
        // SHT_NOBITS sections occupy no file space.
        if sh_type == 8 {
            return Ok((name, &[]));
        }
        let start = usize::try_from(offset).map_err(|_| bad("section offset"))?;
        let len = usize::try_from(size).map_err(|_| bad("section size"))?;
        let end = start.checked_add(len).ok_or_else(|| bad("section size"))?;
        let data = elf
            .get(start..end)
            .ok_or_else(|| bad("section out of file"))?;
        Ok((name, data))
    };
    let (_, strtab) = section(shstrndx)?;
    for i in 0..shnum {
        let (name_off, data) = section(i)?;
        let name = strtab
            .get(name_off as usize..)
            .and_then(|s| s.split(|&b| b == 0).next())
            .unwrap_or_default();
        if name == b".modinfo" {
            let entries = data
                .split(|&b| b == 0)
                .filter(|s| !s.is_empty())
                .filter_map(|s| {
                    let s = String::from_utf8_lossy(s);
                    s.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                })
                .collect();
            return Ok(ModInfo { entries });
        }
    }
    Err(ModuleError::NoModinfo {
        what: what.to_string(),
    })
}

fn read_u16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
fn read_u32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}
fn read_u64(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// Reads a module file, decompressing `.ko.xz` and `.ko.gz`.
pub fn read_module_file(path: &Path) -> Result<Vec<u8>, ModuleError> {
    let raw = fs::read(path).map_err(|source| ModuleError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let decompress_err = |source| ModuleError::Decompress {
        path: path.to_path_buf(),
        source,
    };
    if name.ends_with(".ko") {
        Ok(raw)
    } else if name.ends_with(".ko.xz") {
        let mut out = Vec::with_capacity(raw.len() * 4);
        xz2::read::XzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(decompress_err)?;
        Ok(out)
    } else if name.ends_with(".ko.gz") {
        let mut out = Vec::with_capacity(raw.len() * 4);
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(decompress_err)?;
        Ok(out)
    } else {
        Err(ModuleError::UnsupportedCompression(path.to_path_buf()))
    }
}

/// What a lookup during [`resolve_load_order`] found for one module name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleLookup {
    /// A loadable module with these (normalized) dependencies.
    Module(Vec<String>),
    /// Built into the kernel (=y): nothing to load.
    Builtin,
    /// Neither.
    Missing,
}

/// Resolves the transitive load order of `roots`: dependencies first, each module once,
/// built-in modules left out. `lookup` is called with normalized names.
pub fn resolve_load_order<S, F>(roots: &[S], mut lookup: F) -> Result<Vec<String>, ModuleError>
where
    S: AsRef<str>,
    F: FnMut(&str) -> Result<ModuleLookup, ModuleError>,
{
    struct Walk<'a, F> {
        lookup: &'a mut F,
        order: Vec<String>,
        done: BTreeSet<String>,
        visiting: BTreeSet<String>,
    }
    impl<F: FnMut(&str) -> Result<ModuleLookup, ModuleError>> Walk<'_, F> {
        fn visit(&mut self, name: &str, needed_by: &str) -> Result<(), ModuleError> {
            if self.done.contains(name) {
                return Ok(());
            }
            if !self.visiting.insert(name.to_string()) {
                return Err(ModuleError::Cycle(name.to_string()));
            }
            match (self.lookup)(name)? {
                ModuleLookup::Builtin => {}
                ModuleLookup::Missing => {
                    return Err(ModuleError::Missing {
                        module: name.to_string(),
                        needed_by: needed_by.to_string(),
                    })
                }
                ModuleLookup::Module(deps) => {
                    for dep in deps {
                        self.visit(&normalize_name(&dep), name)?;
                    }
                    self.order.push(name.to_string());
                }
            }
            self.visiting.remove(name);
            self.done.insert(name.to_string());
            Ok(())
        }
    }
    let mut walk = Walk {
        lookup: &mut lookup,
        order: Vec::new(),
        done: BTreeSet::new(),
        visiting: BTreeSet::new(),
    };
    for root in roots {
        walk.visit(&normalize_name(root.as_ref()), "the module list")?;
    }
    Ok(walk.order)
}

/// A module file of a kernel tree, resolved by [`ModuleIndex::resolve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleFile {
    /// Normalized module name (`kvm_amd`).
    pub name: String,
    /// The file on the host, possibly compressed.
    pub path: PathBuf,
    /// The decompressed file name (`kvm-amd.ko`).
    pub file_name: String,
}

impl ModuleFile {
    /// The decompressed module.
    pub fn read(&self) -> Result<Vec<u8>, ModuleError> {
        read_module_file(&self.path)
    }
}

/// The modules of one kernel: every `*.ko[.xz|.gz]` under `<modules>/<kver>/kernel` and the
/// names in `modules.builtin`.
#[derive(Debug, Clone, Default)]
pub struct ModuleIndex {
    files: BTreeMap<String, PathBuf>,
    builtin: BTreeSet<String>,
}

impl ModuleIndex {
    /// Indexes `dir`, a kernel's `lib/modules/<kver>` directory.
    pub fn scan(dir: &Path) -> Result<Self, ModuleError> {
        let mut index = ModuleIndex::default();
        let builtin_path = dir.join("modules.builtin");
        match fs::read_to_string(&builtin_path) {
            Ok(text) => {
                index.builtin = text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(normalize_name)
                    .collect();
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ModuleError::Io {
                    path: builtin_path,
                    source,
                })
            }
        }
        index.walk(&dir.join("kernel"))?;
        Ok(index)
    }

    /// An index from explicit parts (for tests and callers with their own trees).
    pub fn from_parts(
        files: impl IntoIterator<Item = PathBuf>,
        builtin: impl IntoIterator<Item = String>,
    ) -> Self {
        let mut index = ModuleIndex {
            builtin: builtin.into_iter().map(|b| normalize_name(&b)).collect(),
            ..Default::default()
        };
        for f in files {
            index.add_file(f);
        }
        index
    }

    fn walk(&mut self, dir: &Path) -> Result<(), ModuleError> {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(ModuleError::Io {
                    path: dir.to_path_buf(),
                    source,
                })
            }
        };
        for entry in entries {
            let entry = entry.map_err(|source| ModuleError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
            let path = entry.path();
            let ty = entry.file_type().map_err(|source| ModuleError::Io {
                path: path.clone(),
                source,
            })?;
            if ty.is_dir() {
                self.walk(&path)?;
            } else {
                self.add_file(path);
            }
        }
        Ok(())
    }

    fn add_file(&mut self, path: PathBuf) {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            return;
        };
        if [".ko", ".ko.xz", ".ko.gz"]
            .iter()
            .any(|s| name.ends_with(s))
        {
            self.files.insert(normalize_name(name), path);
        }
    }

    /// Whether `name` is built into the kernel.
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&normalize_name(name))
    }

    /// The file of module `name`, if it is a loadable module.
    pub fn path(&self, name: &str) -> Option<&Path> {
        self.files.get(&normalize_name(name)).map(PathBuf::as_path)
    }

    /// Resolves `roots` and their dependencies into load order (built-in ones skipped).
    pub fn resolve<S: AsRef<str>>(&self, roots: &[S]) -> Result<Vec<ModuleFile>, ModuleError> {
        let order = resolve_load_order(roots, |name| {
            if let Some(path) = self.files.get(name) {
                let elf = read_module_file(path)?;
                let info = parse_modinfo(&elf, &path.display().to_string())?;
                Ok(ModuleLookup::Module(info.depends()))
            } else if self.builtin.contains(name) {
                Ok(ModuleLookup::Builtin)
            } else {
                Ok(ModuleLookup::Missing)
            }
        })?;
        order
            .into_iter()
            .map(|name| {
                let path = self.files.get(&name).cloned().ok_or(ModuleError::Missing {
                    module: name.clone(),
                    needed_by: "the module list".to_string(),
                })?;
                let file_name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .map(|n| match n.find(".ko") {
                        Some(i) => format!("{}.ko", &n[..i]),
                        None => n.to_string(),
                    })
                    .unwrap_or_else(|| format!("{name}.ko"));
                Ok(ModuleFile {
                    name,
                    path,
                    file_name,
                })
            })
            .collect()
    }
}

/// Adds `modules`, decompressed, to `/lib/modules/` of `initramfs`, plus `/lib/modules/load.list`
/// naming their files in load order.
pub fn add_to_initramfs(
    initramfs: &mut Initramfs,
    modules: &[ModuleFile],
) -> Result<(), ModuleError> {
    let mut list = String::new();
    for m in modules {
        let data = m.read()?;
        initramfs.file(format!("{MODULES_DIR}/{}", m.file_name), data, 0o644)?;
        list.push_str(&m.file_name);
        list.push('\n');
    }
    initramfs.file(LOAD_LIST, list, 0o644)?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a minimal ELF64 LE file with a NULL section, `.modinfo`, and `.shstrtab`.
    pub(crate) fn synthetic_module(modinfo: &[u8]) -> Vec<u8> {
        let shstrtab = b"\0.modinfo\0.shstrtab\0";
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2; // ELFCLASS64
        elf[5] = 1; // little endian
        elf[6] = 1; // version
        elf[16..18].copy_from_slice(&1u16.to_le_bytes()); // ET_REL
        elf[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86_64
        let modinfo_off = elf.len();
        elf.extend_from_slice(modinfo);
        let strtab_off = elf.len();
        elf.extend_from_slice(shstrtab);
        while elf.len() & 7 != 0 {
            elf.push(0);
        }
        let shoff = elf.len();
        let mut sh = |name: u32, ty: u32, off: usize, size: usize| {
            let mut h = [0u8; 64];
            h[0..4].copy_from_slice(&name.to_le_bytes());
            h[4..8].copy_from_slice(&ty.to_le_bytes());
            h[24..32].copy_from_slice(&(off as u64).to_le_bytes());
            h[32..40].copy_from_slice(&(size as u64).to_le_bytes());
            elf.extend_from_slice(&h);
        };
        sh(0, 0, 0, 0);
        sh(1, 1, modinfo_off, modinfo.len()); // .modinfo, PROGBITS
        sh(10, 3, strtab_off, shstrtab.len()); // .shstrtab, STRTAB
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
        elf
    }

    #[test]
    fn modinfo_depends_from_synthetic_elf() {
        let elf = synthetic_module(
            b"license=GPL\0\0depends=kvm,ccp\0retpoline=Y\0name=kvm_amd\0vermagic=6.12\0",
        );
        let info = parse_modinfo(&elf, "kvm-amd.ko").unwrap();
        assert_eq!(info.get("name"), Some("kvm_amd"));
        assert_eq!(info.get("license"), Some("GPL"));
        assert_eq!(info.depends(), ["kvm", "ccp"]);
    }

    #[test]
    fn modinfo_empty_depends_and_dashes() {
        let elf = synthetic_module(b"depends=\0name=x\0");
        assert!(parse_modinfo(&elf, "x").unwrap().depends().is_empty());
        let elf = synthetic_module(b"depends=virtio-dma-buf,drm\0");
        assert_eq!(
            parse_modinfo(&elf, "x").unwrap().depends(),
            ["virtio_dma_buf", "drm"]
        );
    }

    #[test]
    fn modinfo_errors() {
        assert!(matches!(
            parse_modinfo(b"not an elf at all", "x"),
            Err(ModuleError::NotElf { .. })
        ));
        let mut elf = synthetic_module(b"depends=\0");
        // Rename ".modinfo" in the string table.
        let pos = elf.windows(8).position(|w| w == b".modinfo").unwrap();
        elf[pos + 1] = b'X';
        assert!(matches!(
            parse_modinfo(&elf, "x"),
            Err(ModuleError::NoModinfo { .. })
        ));
        let truncated = &synthetic_module(b"depends=\0")[..80];
        assert!(parse_modinfo(truncated, "x").is_err());
    }

    fn graph(
        edges: &[(&str, &[&str])],
        builtin: &[&str],
    ) -> impl FnMut(&str) -> Result<ModuleLookup, ModuleError> {
        let edges: BTreeMap<String, Vec<String>> = edges
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect();
        let builtin: BTreeSet<String> = builtin.iter().map(|s| s.to_string()).collect();
        move |name| {
            Ok(match edges.get(name) {
                Some(deps) => ModuleLookup::Module(deps.clone()),
                None if builtin.contains(name) => ModuleLookup::Builtin,
                None => ModuleLookup::Missing,
            })
        }
    }

    #[test]
    fn diamond_loads_each_dependency_once_first() {
        let lookup = graph(
            &[
                ("top", &["left", "right"]),
                ("left", &["base"]),
                ("right", &["base"]),
                ("base", &[]),
            ],
            &[],
        );
        let order = resolve_load_order(&["top"], lookup).unwrap();
        assert_eq!(order, ["base", "left", "right", "top"]);
    }

    #[test]
    fn kvm_chain_order() {
        let lookup = graph(
            &[
                ("kvm_amd", &["kvm", "ccp"]),
                ("kvm", &["irqbypass"]),
                ("ccp", &[]),
                ("irqbypass", &[]),
            ],
            &[],
        );
        let order = resolve_load_order(&["kvm-amd"], lookup).unwrap();
        assert_eq!(order, ["irqbypass", "kvm", "ccp", "kvm_amd"]);
    }

    #[test]
    fn missing_module_is_named() {
        let lookup = graph(&[("virtio_gpu", &["drm", "nope"]), ("drm", &[])], &[]);
        let err = resolve_load_order(&["virtio-gpu"], lookup).unwrap_err();
        match &err {
            ModuleError::Missing { module, needed_by } => {
                assert_eq!(module, "nope");
                assert_eq!(needed_by, "virtio_gpu");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().contains("\"nope\""));
    }

    #[test]
    fn dash_and_underscore_are_the_same_module() {
        let lookup = graph(
            &[("virtio_rng", &[]), ("kvm_amd", &["kvm"]), ("kvm", &[])],
            &[],
        );
        let order = resolve_load_order(&["virtio-rng", "virtio_rng", "kvm-amd", "kvm_amd"], lookup)
            .unwrap();
        assert_eq!(order, ["virtio_rng", "kvm", "kvm_amd"]);
        assert_eq!(
            normalize_name("kernel/arch/x86/kvm/kvm-amd.ko.xz"),
            "kvm_amd"
        );
    }

    #[test]
    fn builtins_are_skipped_and_cycles_reported() {
        let lookup = graph(&[("virtio_input", &["virtio"])], &["virtio"]);
        assert_eq!(
            resolve_load_order(&["virtio_input"], lookup).unwrap(),
            ["virtio_input"]
        );
        let lookup = graph(&[("a", &["b"]), ("b", &["a"])], &[]);
        assert!(matches!(
            resolve_load_order(&["a"], lookup),
            Err(ModuleError::Cycle(_))
        ));
    }

    #[test]
    fn index_resolves_files_and_decompresses() {
        let dir = std::env::temp_dir().join(format!("pv-image-mods-{}", std::process::id()));
        let kdir = dir.join("kernel/arch/x86/kvm");
        fs::create_dir_all(&kdir).unwrap();
        fs::write(
            kdir.join("kvm-amd.ko"),
            synthetic_module(b"depends=kvm\0name=kvm_amd\0"),
        )
        .unwrap();
        // kvm compressed with gzip to exercise decompression.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &synthetic_module(b"depends=\0name=kvm\0")).unwrap();
        fs::write(kdir.join("kvm.ko.gz"), gz.finish().unwrap()).unwrap();
        fs::write(
            dir.join("modules.builtin"),
            "kernel/drivers/virtio/virtio.ko\n",
        )
        .unwrap();

        let index = ModuleIndex::scan(&dir).unwrap();
        assert!(index.is_builtin("virtio"));
        let mods = index.resolve(&["kvm_amd", "virtio"]).unwrap();
        let names: Vec<_> = mods.iter().map(|m| m.file_name.as_str()).collect();
        assert_eq!(names, ["kvm.ko", "kvm-amd.ko"]);

        let mut initramfs = Initramfs::new();
        add_to_initramfs(&mut initramfs, &mods).unwrap();
        assert_eq!(initramfs.bytes(LOAD_LIST).unwrap(), b"kvm.ko\nkvm-amd.ko\n");
        assert!(initramfs
            .bytes("/lib/modules/kvm.ko")
            .unwrap()
            .starts_with(b"\x7fELF"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
