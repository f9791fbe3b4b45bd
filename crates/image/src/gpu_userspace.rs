//! The guest's GPU userspace, from Debian trixie's packages: Mesa's Venus Vulkan driver
//! (`libvulkan_virtio.so` with its ICD manifest; the only Vulkan driver installed), the Vulkan
//! loader, `vulkaninfo` and `vkcube`, and (at [`GpuUserspace::Full`]) Mesa's EGL/GL with the
//! virgl driver (inside `libgallium`, which links LLVM), libglvnd, `eglinfo` and `kmscube` (a
//! spinning cube drawn with GLES on GBM and page-flipped with KMS: a small real GL program).
//!
//! The packages' dependency closure is downloaded and extracted into the cache like the
//! kernel; from it only the files named in [`VULKAN_FILES`] / [`GL_FILES`] and the shared
//! libraries they need are put in the image. Needs are read from the ELF files themselves
//! (`DT_NEEDED` and `PT_INTERP`, recursively, see [`crate::elf`]) and resolved against the
//! extracted packages, never against the host. Libraries go to `/usr/lib/x86_64-linux-gnu/`
//! under their sonames, the loader to `/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2` with
//! the interpreter path programs name (`/lib64/ld-linux-x86-64.so.2`) linked to it; the
//! loader finds everything through its built-in search path (there is no `ld.so.cache`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::cache::Cache;
use crate::cpio::{CpioError, Initramfs};
use crate::debian::{self, Apt, DebianError, PackageRef, SUITE};
use crate::elf::{self, ElfError};

/// How much GPU userspace the guest image carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuUserspace {
    /// None: the smallest image, for tests that do not touch the GPU's 3D side.
    None,
    /// Venus: the Vulkan loader, Mesa's virtio Vulkan driver, vulkaninfo, vkcube.
    Vulkan,
    /// Venus plus EGL/GL (virgl) and eglinfo; libgallium brings LLVM (about 200 MB).
    #[default]
    Full,
}

impl GpuUserspace {
    /// The name used on the command line and in manifests.
    pub fn name(self) -> &'static str {
        match self {
            GpuUserspace::None => "none",
            GpuUserspace::Vulkan => "vulkan",
            GpuUserspace::Full => "full",
        }
    }
}

impl std::str::FromStr for GpuUserspace {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(GpuUserspace::None),
            "vulkan" => Ok(GpuUserspace::Vulkan),
            "full" => Ok(GpuUserspace::Full),
            _ => Err(format!(
                "unknown GPU userspace '{s}': use none, vulkan or full"
            )),
        }
    }
}

/// The packages (trixie) the Vulkan part comes from.
pub const VULKAN_PACKAGES: &[&str] = &["mesa-vulkan-drivers", "libvulkan1", "vulkan-tools"];
/// The packages the EGL/GL part adds.
pub const GL_PACKAGES: &[&str] = &[
    "libegl1",
    "libegl-mesa0",
    "libgl1",
    "libgles2",
    "libgbm1",
    "mesa-libgallium",
    "mesa-utils-bin",
    "kmscube",
];
/// Packages of the closure that carry nothing the guest's programs load.
pub const EXCLUDED_PACKAGES: &[&str] = &[
    "debconf",
    "perl-base",
    "dpkg",
    "libc-gconv-modules-extra",
    "pci.ids",
    "libsensors-config",
];

/// The multiarch library directory in packages and in the image.
pub const LIB_DIR: &str = "usr/lib/x86_64-linux-gnu";

/// Files of the Vulkan part: (path in the packages, path in the image). Libraries loaded with
/// dlopen (the loader, the ICD) are named here because no `DT_NEEDED` leads to them.
pub const VULKAN_FILES: &[(&str, &str)] = &[
    ("usr/bin/vulkaninfo", "/usr/bin/vulkaninfo"),
    ("usr/bin/vkcube", "/usr/bin/vkcube"),
    (
        "usr/lib/x86_64-linux-gnu/libvulkan.so.1",
        "/usr/lib/x86_64-linux-gnu/libvulkan.so.1",
    ),
    (
        "usr/lib/x86_64-linux-gnu/libvulkan_virtio.so",
        "/usr/lib/x86_64-linux-gnu/libvulkan_virtio.so",
    ),
    (
        "usr/share/vulkan/icd.d/virtio_icd.json",
        "/usr/share/vulkan/icd.d/virtio_icd.json",
    ),
];

/// Files of the EGL/GL part (see [`VULKAN_FILES`]).
pub const GL_FILES: &[(&str, &str)] = &[
    ("usr/bin/eglinfo.x86_64-linux-gnu", "/usr/bin/eglinfo"),
    ("usr/bin/kmscube", "/usr/bin/kmscube"),
    (
        "usr/lib/x86_64-linux-gnu/libEGL.so.1",
        "/usr/lib/x86_64-linux-gnu/libEGL.so.1",
    ),
    (
        "usr/lib/x86_64-linux-gnu/libEGL_mesa.so.0",
        "/usr/lib/x86_64-linux-gnu/libEGL_mesa.so.0",
    ),
    (
        "usr/lib/x86_64-linux-gnu/libGLESv2.so.2",
        "/usr/lib/x86_64-linux-gnu/libGLESv2.so.2",
    ),
    (
        "usr/lib/x86_64-linux-gnu/libGL.so.1",
        "/usr/lib/x86_64-linux-gnu/libGL.so.1",
    ),
    (
        "usr/lib/x86_64-linux-gnu/libgbm.so.1",
        "/usr/lib/x86_64-linux-gnu/libgbm.so.1",
    ),
    (
        "usr/lib/x86_64-linux-gnu/gbm/dri_gbm.so",
        "/usr/lib/x86_64-linux-gnu/gbm/dri_gbm.so",
    ),
    (
        "usr/share/glvnd/egl_vendor.d/50_mesa.json",
        "/usr/share/glvnd/egl_vendor.d/50_mesa.json",
    ),
];

/// Where libraries are looked up inside each extracted package, in order.
const LIB_SEARCH: &[&str] = &[
    "usr/lib/x86_64-linux-gnu",
    "lib/x86_64-linux-gnu",
    "usr/lib64",
    "lib64",
    "usr/lib",
    "lib",
];

const RESOLVED_FORMAT: u32 = 1;

/// Errors assembling the guest's GPU userspace.
#[derive(Debug, Error)]
pub enum GpuUserspaceError {
    #[error("cannot get the Debian packages")]
    Debian(#[from] DebianError),
    #[error("cannot read a file of the packages")]
    Elf(#[from] ElfError),
    #[error("{path} is in none of the packages {packages}")]
    MissingFile { path: String, packages: String },
    #[error("{soname} (needed by {needed_by}) is in none of the packages; add the package that ships it")]
    MissingLibrary { soname: String, needed_by: String },
    #[error("{0} is a symbolic link that leads nowhere inside its package")]
    DanglingLink(PathBuf),
}

/// One file of the GPU userspace in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFile {
    /// Absolute path in the image.
    pub dest: PathBuf,
    /// The (link-resolved) file in an extracted package.
    pub src: PathBuf,
    /// Permission bits.
    pub mode: u32,
    /// Its size in bytes.
    pub size: u64,
    /// The package it comes from.
    pub package: String,
}

/// What [`resolve_files`] found: the files, the links beside them, and the packages they
/// come from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestGpuFiles {
    pub files: Vec<GuestFile>,
    /// (link in the image, target).
    pub links: Vec<(PathBuf, String)>,
    /// Package → version of the packages that contributed files.
    pub packages: BTreeMap<String, String>,
}

impl GuestGpuFiles {
    /// Bytes of all files.
    pub fn size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Adds the files and links to an initramfs tree.
    pub fn add_to(&self, fs: &mut Initramfs) -> Result<(), CpioError> {
        for f in &self.files {
            fs.file_from_host(&f.dest, &f.src, f.mode)?;
        }
        for (link, target) in &self.links {
            fs.symlink(link, target.clone())?;
        }
        Ok(())
    }
}

/// An extracted package: its name and version and where it was extracted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtractedPackage {
    pub package: PackageRef,
    pub root: PathBuf,
}

/// Follows symbolic links of `rel` inside `root` (absolute targets are taken relative to
/// `root`); None when the chain leaves the package or loops.
fn resolve_in(root: &Path, rel: &Path) -> Option<PathBuf> {
    let mut path = root.join(rel);
    for _ in 0..16 {
        let meta = fs::symlink_metadata(&path).ok()?;
        if !meta.file_type().is_symlink() {
            return meta.is_file().then_some(path);
        }
        let target = fs::read_link(&path).ok()?;
        path = if target.is_absolute() {
            root.join(target.strip_prefix("/").ok()?)
        } else {
            path.parent()?.join(target)
        };
        if !path.starts_with(root)
            || path
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            // Normalize `..` without touching the host's file system outside the root.
            path = normalize(&path)?;
            if !path.starts_with(root) {
                return None;
            }
        }
    }
    None
}

/// Removes `.` and `..` components lexically.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    Some(out)
}

/// Resolves `wanted` (path in the packages, path in the image) and every shared library they
/// need, recursively, against `packages`. Deterministic: packages are searched in the order
/// given.
pub fn resolve_files(
    packages: &[ExtractedPackage],
    wanted: &[(&str, &str)],
) -> Result<GuestGpuFiles, GpuUserspaceError> {
    // soname (file name in a library directory) → (package index, path relative to its root)
    let mut index: BTreeMap<String, (usize, PathBuf)> = BTreeMap::new();
    for (i, p) in packages.iter().enumerate() {
        for dir in LIB_SEARCH {
            let Ok(entries) = fs::read_dir(p.root.join(dir)) else {
                continue;
            };
            let mut names: Vec<String> = entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            for name in names {
                index
                    .entry(name.clone())
                    .or_insert_with(|| (i, Path::new(dir).join(&name)));
            }
        }
    }
    let find = |rel: &str| -> Option<(usize, PathBuf)> {
        packages
            .iter()
            .enumerate()
            .find_map(|(i, p)| resolve_in(&p.root, Path::new(rel)).map(|src| (i, src)))
    };

    let mut out = GuestGpuFiles::default();
    let mut seen: BTreeSet<PathBuf> = BTreeSet::new();
    let mut links: BTreeMap<PathBuf, String> = BTreeMap::new();
    let mut queue: VecDeque<(PathBuf, usize, PathBuf)> = VecDeque::new(); // dest, pkg, src
    for (rel, dest) in wanted {
        let (i, src) = find(rel).ok_or_else(|| GpuUserspaceError::MissingFile {
            path: rel.to_string(),
            packages: packages
                .iter()
                .map(|p| p.package.name.as_str())
                .collect::<Vec<_>>()
                .join(" "),
        })?;
        queue.push_back((PathBuf::from(dest), i, src));
    }
    while let Some((dest, i, src)) = queue.pop_front() {
        if !seen.insert(dest.clone()) {
            continue;
        }
        let meta = fs::metadata(&src).map_err(|source| ElfError::Io {
            path: src.clone(),
            source,
        })?;
        let pkg = &packages[i].package;
        if elf::is_elf(&src) {
            let info = elf::dynamic_info(&src)?;
            let mut needs = info.needed.clone();
            if let Some(interp) = &info.interpreter {
                let name = Path::new(interp)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let in_lib = format!("/{LIB_DIR}/{name}");
                if *interp != in_lib {
                    links.insert(PathBuf::from(interp), in_lib);
                }
                needs.push(name);
            }
            for soname in needs {
                let (j, rel) =
                    index
                        .get(&soname)
                        .ok_or_else(|| GpuUserspaceError::MissingLibrary {
                            soname: soname.clone(),
                            needed_by: dest.display().to_string(),
                        })?;
                let lib_src = resolve_in(&packages[*j].root, rel)
                    .ok_or_else(|| GpuUserspaceError::DanglingLink(packages[*j].root.join(rel)))?;
                queue.push_back((Path::new("/").join(LIB_DIR).join(&soname), *j, lib_src));
            }
        }
        out.packages.insert(pkg.name.clone(), pkg.version.clone());
        out.files.push(GuestFile {
            dest,
            src,
            mode: meta.permissions().mode() & 0o7777,
            size: meta.len(),
            package: pkg.name.clone(),
        });
    }
    out.files.sort_by(|a, b| a.dest.cmp(&b.dest));
    out.links = links.into_iter().collect();
    Ok(out)
}

/// The package list resolved last for a level (`<cache>/gpu-userspace-<level>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Resolved {
    format: u32,
    lists_stamp: u64,
    roots: Vec<String>,
    packages: Vec<PackageRef>,
}

/// The roots and files of a level.
pub fn parts(level: GpuUserspace) -> (Vec<&'static str>, Vec<(&'static str, &'static str)>) {
    let mut roots = Vec::new();
    let mut files = Vec::new();
    if level != GpuUserspace::None {
        roots.extend_from_slice(VULKAN_PACKAGES);
        files.extend_from_slice(VULKAN_FILES);
    }
    if level == GpuUserspace::Full {
        roots.extend_from_slice(GL_PACKAGES);
        files.extend_from_slice(GL_FILES);
    }
    (roots, files)
}

/// Downloads (when needed) and extracts the packages of `level` and resolves its files.
/// Takes the cache lock. [`GpuUserspace::None`] gives nothing and touches nothing.
pub fn fetch_gpu_userspace(
    cache: &Cache,
    level: GpuUserspace,
    quiet: bool,
) -> Result<GuestGpuFiles, GpuUserspaceError> {
    let (roots, files) = parts(level);
    if roots.is_empty() {
        return Ok(GuestGpuFiles::default());
    }
    let _lock = cache.lock().map_err(DebianError::from)?;
    let apt = Apt::new(cache, SUITE, quiet)?;
    apt.update_if_stale()?;
    let stamp = apt.lists_stamp().unwrap_or(0);
    let record = cache.path(&format!("gpu-userspace-{}.json", level.name()));
    let root_names: Vec<String> = roots.iter().map(|s| s.to_string()).collect();
    let previous: Option<Resolved> = fs::read(&record)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let packages = match previous
        .filter(|r| r.format == RESOLVED_FORMAT && r.lists_stamp == stamp && r.roots == root_names)
    {
        Some(r) => r.packages,
        None => {
            let names = apt.depends_closure(&roots, EXCLUDED_PACKAGES)?;
            let packages = apt.candidate_versions(&names)?;
            debian::write_json(
                &record,
                &Resolved {
                    format: RESOLVED_FORMAT,
                    lists_stamp: stamp,
                    roots: root_names,
                    packages: packages.clone(),
                },
            )?;
            packages
        }
    };
    let missing: Vec<PackageRef> = packages
        .iter()
        .filter(|p| !debian::extracted_dir(cache, p).is_dir())
        .cloned()
        .collect();
    if !missing.is_empty() {
        let debs = apt.download_all(&missing, &cache.path("debs"))?;
        if !quiet {
            eprintln!("image: extracting {} GPU userspace packages", debs.len());
        }
        for (p, deb) in missing.iter().zip(&debs) {
            debian::extract_deb(deb, &debian::extracted_dir(cache, p))?;
        }
    }
    let extracted: Vec<ExtractedPackage> = packages
        .into_iter()
        .map(|p| ExtractedPackage {
            root: debian::extracted_dir(cache, &p),
            package: p,
        })
        .collect();
    resolve_files(&extracted, &files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::tests::synthetic_elf;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pv-gpu-us-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn put(root: &Path, rel: &str, data: &[u8], mode: u32) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, data).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn link(root: &Path, rel: &str, target: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, path).unwrap();
    }

    fn pkg(dir: &Path, name: &str) -> ExtractedPackage {
        ExtractedPackage {
            package: PackageRef {
                name: name.into(),
                version: "1.0".into(),
            },
            root: dir.join(name),
        }
    }

    /// libc6 (loader + libc), libvulkan1 (versioned file behind a soname link), vulkan-tools
    /// (a program), mesa-vulkan-drivers (a dlopen'd driver needing libfoo from libfoo1),
    /// and an unrelated package.
    fn fake_packages(dir: &Path) -> Vec<ExtractedPackage> {
        let interp = "/lib64/ld-linux-x86-64.so.2";
        let libc6 = dir.join("libc6");
        put(
            &libc6,
            "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
            &synthetic_elf(None, &[], Some("ld-linux-x86-64.so.2")),
            0o755,
        );
        put(
            &libc6,
            "usr/lib/x86_64-linux-gnu/libc.so.6",
            &synthetic_elf(None, &["ld-linux-x86-64.so.2"], Some("libc.so.6")),
            0o755,
        );
        link(
            &libc6,
            "usr/lib64/ld-linux-x86-64.so.2",
            "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        );
        let vk = dir.join("libvulkan1");
        put(
            &vk,
            "usr/lib/x86_64-linux-gnu/libvulkan.so.1.4.309",
            &synthetic_elf(None, &["libc.so.6"], Some("libvulkan.so.1")),
            0o644,
        );
        link(
            &vk,
            "usr/lib/x86_64-linux-gnu/libvulkan.so.1",
            "libvulkan.so.1.4.309",
        );
        let tools = dir.join("vulkan-tools");
        put(
            &tools,
            "usr/bin/vulkaninfo",
            &synthetic_elf(Some(interp), &["libc.so.6"], None),
            0o755,
        );
        let mesa = dir.join("mesa-vulkan-drivers");
        put(
            &mesa,
            "usr/lib/x86_64-linux-gnu/libvulkan_virtio.so",
            &synthetic_elf(None, &["libfoo.so.1", "libc.so.6"], None),
            0o644,
        );
        put(
            &mesa,
            "usr/lib/x86_64-linux-gnu/libvulkan_radeon.so",
            &synthetic_elf(None, &["libbar.so.1"], None),
            0o644,
        );
        put(
            &mesa,
            "usr/share/vulkan/icd.d/virtio_icd.json",
            b"{}",
            0o644,
        );
        let foo = dir.join("libfoo1");
        put(
            &foo,
            "usr/lib/x86_64-linux-gnu/libfoo.so.1.2",
            &synthetic_elf(None, &["libc.so.6"], None),
            0o644,
        );
        link(
            &foo,
            "usr/lib/x86_64-linux-gnu/libfoo.so.1",
            "/usr/lib/x86_64-linux-gnu/libfoo.so.1.2",
        );
        put(
            &dir.join("unrelated"),
            "usr/lib/x86_64-linux-gnu/libunused.so.3",
            b"\x7fELF",
            0o644,
        );
        [
            "libc6",
            "libvulkan1",
            "vulkan-tools",
            "mesa-vulkan-drivers",
            "libfoo1",
            "unrelated",
        ]
        .iter()
        .map(|n| pkg(dir, n))
        .collect()
    }

    const WANTED: &[(&str, &str)] = &[
        ("usr/bin/vulkaninfo", "/usr/bin/vulkaninfo"),
        (
            "usr/lib/x86_64-linux-gnu/libvulkan.so.1",
            "/usr/lib/x86_64-linux-gnu/libvulkan.so.1",
        ),
        (
            "usr/lib/x86_64-linux-gnu/libvulkan_virtio.so",
            "/usr/lib/x86_64-linux-gnu/libvulkan_virtio.so",
        ),
        (
            "usr/share/vulkan/icd.d/virtio_icd.json",
            "/usr/share/vulkan/icd.d/virtio_icd.json",
        ),
    ];

    #[test]
    fn needed_libraries_are_resolved_recursively_inside_the_packages() {
        let dir = scratch("resolve");
        let packages = fake_packages(&dir);
        let got = resolve_files(&packages, WANTED).unwrap();
        let dests: Vec<String> = got
            .files
            .iter()
            .map(|f| f.dest.display().to_string())
            .collect();
        assert_eq!(
            dests,
            [
                "/usr/bin/vulkaninfo",
                "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
                "/usr/lib/x86_64-linux-gnu/libc.so.6",
                "/usr/lib/x86_64-linux-gnu/libfoo.so.1",
                "/usr/lib/x86_64-linux-gnu/libvulkan.so.1",
                "/usr/lib/x86_64-linux-gnu/libvulkan_virtio.so",
                "/usr/share/vulkan/icd.d/virtio_icd.json",
            ]
        );
        // Links are followed: the image holds the real files under the soname.
        let foo = got
            .files
            .iter()
            .find(|f| f.dest.ends_with("libfoo.so.1"))
            .unwrap();
        assert!(foo.src.ends_with("libfoo.so.1.2"), "{foo:?}");
        assert_eq!(foo.package, "libfoo1");
        let info = got
            .files
            .iter()
            .find(|f| f.dest.ends_with("vulkaninfo"))
            .unwrap();
        assert_eq!(info.mode, 0o755);
        assert_eq!(
            got.links,
            [(
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
                "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2".to_string()
            )]
        );
        let names: Vec<&str> = got.packages.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "libc6",
                "libfoo1",
                "libvulkan1",
                "mesa-vulkan-drivers",
                "vulkan-tools"
            ]
        );
        assert!(got.size() > 0);

        // Into an initramfs: files and the loader link.
        let mut fs_tree = Initramfs::new();
        got.add_to(&mut fs_tree).unwrap();
        let entries = crate::cpio::parse_newc(&fs_tree.write_to(Vec::new()).unwrap()).unwrap();
        let loader = entries
            .iter()
            .find(|e| e.name == "lib64/ld-linux-x86-64.so.2")
            .unwrap();
        assert!(loader.is_symlink());
        assert_eq!(
            loader.data,
            b"/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_library_or_file_is_named() {
        let dir = scratch("missing");
        let mut packages = fake_packages(&dir);
        packages.retain(|p| p.package.name != "libfoo1");
        match resolve_files(&packages, WANTED) {
            Err(GpuUserspaceError::MissingLibrary { soname, needed_by }) => {
                assert_eq!(soname, "libfoo.so.1");
                assert!(needed_by.ends_with("libvulkan_virtio.so"));
            }
            other => panic!("{other:?}"),
        }
        let err = resolve_files(&packages, &[("usr/bin/nope", "/usr/bin/nope")]).unwrap_err();
        assert!(
            matches!(err, GpuUserspaceError::MissingFile { .. }),
            "{err}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn links_cannot_leave_the_package() {
        let dir = scratch("escape");
        let root = dir.join("p");
        link(
            &root,
            "usr/lib/x86_64-linux-gnu/libevil.so.1",
            "../../../../../../etc/passwd",
        );
        put(&root, "usr/lib/x86_64-linux-gnu/libok.so.1.0", b"x", 0o644);
        link(&root, "usr/lib/x86_64-linux-gnu/libok.so.1", "libok.so.1.0");
        link(&root, "usr/lib/x86_64-linux-gnu/libloop.so", "libloop.so");
        assert_eq!(
            resolve_in(&root, Path::new("usr/lib/x86_64-linux-gnu/libevil.so.1")),
            None
        );
        assert_eq!(
            resolve_in(&root, Path::new("usr/lib/x86_64-linux-gnu/libloop.so")),
            None
        );
        assert_eq!(
            resolve_in(&root, Path::new("usr/lib/x86_64-linux-gnu/libok.so.1")),
            Some(root.join("usr/lib/x86_64-linux-gnu/libok.so.1.0"))
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn levels() {
        assert_eq!(parts(GpuUserspace::None).0.len(), 0);
        let (roots, files) = parts(GpuUserspace::Vulkan);
        assert!(roots.contains(&"mesa-vulkan-drivers") && !roots.contains(&"mesa-libgallium"));
        assert!(files
            .iter()
            .any(|f| f.1 == "/usr/share/vulkan/icd.d/virtio_icd.json"));
        let (roots, files) = parts(GpuUserspace::Full);
        assert!(
            roots.contains(&"mesa-libgallium") && files.iter().any(|f| f.1 == "/usr/bin/eglinfo")
        );
        for level in [GpuUserspace::None, GpuUserspace::Vulkan, GpuUserspace::Full] {
            assert_eq!(level.name().parse::<GpuUserspace>(), Ok(level));
        }
        assert!("gl".parse::<GpuUserspace>().is_err());
        assert_eq!(GpuUserspace::default(), GpuUserspace::Full);
    }
}
