//! The host "GPU runtime": virglrenderer 1.3, Mesa (lavapipe, llvmpipe, the virgl and Venus
//! pieces), the Vulkan and EGL loaders and the glibc they were built against, assembled from
//! Debian sid's binary packages without installing anything, and run through the runtime's
//! own dynamic loader.
//!
//! Why: Debian 12's virglrenderer (0.10.4) cannot serve Venus (its capset says wire format 0),
//! and sid's libvirglrenderer 1.3 needs glibc ≥ 2.38, so it cannot be loaded into a process of
//! the host's glibc. A program started as
//! `RT/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 --inhibit-cache --library-path
//! RT/usr/lib/x86_64-linux-gnu PROGRAM` runs on sid's glibc instead and can load everything in
//! the runtime ([`GpuRuntime::command`]). Nothing is exported as `LD_LIBRARY_PATH`: that would
//! break every host program started from inside.
//!
//! Assembly: the dependency closure of [`ROOT_PACKAGES`] in sid (Depends and Pre-Depends,
//! recursively; minus [`EXCLUDED_PACKAGES`]) is downloaded through apt with a private
//! configuration, each package is `dpkg-deb -x`'d into a staging directory, what is not needed
//! is pruned ([`prune`]; Mesa's hardware Vulkan drivers other than lavapipe and virtio, docs,
//! man pages) unless [`GpuRuntimeOptions::full`], `VERSIONS` and `manifest.json` are written,
//! and the directory is renamed into place:
//!
//! ```text
//! <cache>/gpu-runtime/resolved.json   the package list resolved last (reused while the lists are unchanged)
//! <cache>/gpu-runtime/<key>/          a published runtime: usr/..., VERSIONS, manifest.json
//! <cache>/gpu-runtime/current         symlink to the runtime built or reused last
//! ```
//!
//! `<key>` is a hash of [`LAYOUT`], the `full` flag and the resolved package list, so a runtime
//! is rebuilt exactly when sid gave different packages (the lists are refreshed at most once a
//! day) and reused, without network, otherwise. The runtime `current` pointed at before is
//! kept (a running VMM may still load from it); older ones are removed.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cache::Cache;
use crate::debian::{self, Apt, PackageRef};
use crate::ImageError;

/// The Debian suite the runtime comes from.
pub const GPU_RUNTIME_SUITE: &str = "sid";

/// The packages whose dependency closure makes the runtime.
pub const ROOT_PACKAGES: &[&str] = &[
    "libc6",
    "libvirglrenderer1",
    "virgl-server",
    "libepoxy0",
    "libgbm1",
    "libdrm2",
    "libvulkan1",
    "mesa-vulkan-drivers",
    "libegl1",
    "libegl-mesa0",
    "libgles2",
    // libepoxy opens glvnd's libOpenGL.so.0 or libGL.so.1 for desktop GL
    // (virgl); without them in the runtime it aborts on hosts that lack them.
    "libopengl0",
    "libgl1",
    "libgl1-mesa-dri",
    "mesa-libgallium",
];

/// Packages of the closure that only matter to an installed system (maintainer scripts,
/// configuration, data no library reads here).
pub const EXCLUDED_PACKAGES: &[&str] = &[
    "debconf",
    "perl-base",
    "dpkg",
    "libc-gconv-modules-extra",
    "pci.ids",
    "libsensors-config",
];

/// Mesa's Vulkan drivers kept by default: lavapipe (the software device the host side renders
/// with when there is no better one) and virtio (Venus, for tests that drive a Venus client on
/// the host).
pub const KEPT_VULKAN_DRIVERS: &[&str] = &["lvp", "virtio"];

/// Directories under `usr/share` removed by default: documentation and the like.
pub const PRUNED_SHARE_DIRS: &[&str] = &["doc", "man", "info", "bug", "lintian"];

/// Bumped whenever the layout produced here changes, to invalidate published runtimes.
pub const LAYOUT: &str = "pv-gpu-runtime/1";

const RESOLVED_FORMAT: u32 = 1;
const MANIFEST_FORMAT: u32 = 1;
/// The multiarch library directory, relative to the runtime's root.
const LIB_DIR: &str = "usr/lib/x86_64-linux-gnu";

/// What [`build_gpu_runtime`] does.
#[derive(Debug, Clone, Default)]
pub struct GpuRuntimeOptions {
    /// The cache directory; None: `$PEARVISOR_CACHE`, `$XDG_CACHE_HOME/pearvisor`,
    /// `~/.cache/pearvisor`.
    pub cache_dir: Option<PathBuf>,
    /// Keep everything the packages ship (all of Mesa's Vulkan drivers, docs, man pages).
    pub full: bool,
    /// No progress lines on stderr.
    pub quiet: bool,
}

/// An assembled GPU runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuRuntime {
    /// The runtime's root: `usr/lib/x86_64-linux-gnu`, `usr/libexec`, `usr/share/...` below it.
    pub root: PathBuf,
    /// The packages it was assembled from, sorted by name.
    pub packages: Vec<PackageRef>,
}

/// The record of a published runtime (`<dir>/manifest.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeManifest {
    pub format: u32,
    pub key: String,
    pub suite: String,
    pub full: bool,
    /// When it was assembled (seconds since the epoch).
    pub created: u64,
    /// Bytes of the files in the runtime.
    pub size: u64,
    pub packages: Vec<PackageRef>,
}

/// The package list resolved last (`<cache>/gpu-runtime/resolved.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Resolved {
    format: u32,
    lists_stamp: u64,
    roots: Vec<String>,
    excluded: Vec<String>,
    packages: Vec<PackageRef>,
}

impl GpuRuntime {
    /// The runtime's dynamic loader (sid's glibc).
    pub fn loader(&self) -> PathBuf {
        self.lib_dir().join("ld-linux-x86-64.so.2")
    }

    /// The runtime's library directory (`usr/lib/x86_64-linux-gnu`).
    pub fn lib_dir(&self) -> PathBuf {
        self.root.join(LIB_DIR)
    }

    /// virglrenderer's render server (`usr/libexec/virgl_render_server`); like every program of
    /// the runtime it must be started through [`GpuRuntime::command`].
    pub fn render_server(&self) -> PathBuf {
        self.root.join("usr/libexec/virgl_render_server")
    }

    /// The version of `package` the runtime holds.
    pub fn version_of(&self, package: &str) -> Option<&str> {
        self.packages
            .iter()
            .find(|p| p.name == package)
            .map(|p| p.version.as_str())
    }

    /// The environment that points the Vulkan loader, libglvnd's EGL, GBM and Mesa's GL at the
    /// runtime: lavapipe as the Vulkan driver, the runtime's layers only, Mesa as the EGL
    /// vendor. Callers set only the variables the user has not set.
    pub fn env(&self) -> Vec<(String, OsString)> {
        let share = self.root.join("usr/share");
        let lib = self.lib_dir();
        [
            ("VK_DRIVER_FILES", share.join("vulkan/icd.d/lvp_icd.json")),
            (
                "VK_IMPLICIT_LAYER_PATH",
                share.join("vulkan/implicit_layer.d"),
            ),
            ("VK_LAYER_PATH", share.join("vulkan/explicit_layer.d")),
            (
                "__EGL_VENDOR_LIBRARY_FILENAMES",
                share.join("glvnd/egl_vendor.d/50_mesa.json"),
            ),
            ("GBM_BACKENDS_PATH", lib.join("gbm")),
            ("LIBGL_DRIVERS_PATH", lib.join("dri")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.into_os_string()))
        .collect()
    }

    /// A command that runs `program` on the runtime's glibc and libraries:
    /// `LOADER --inhibit-cache --library-path LIB PROGRAM`, with [`GpuRuntime::env`] for the
    /// variables not already set in this process's environment. Add the program's arguments.
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(self.loader());
        cmd.arg("--inhibit-cache")
            .arg("--library-path")
            .arg(self.lib_dir())
            .arg(program);
        for (key, value) in self.env() {
            if std::env::var_os(&key).is_none() {
                cmd.env(key, value);
            }
        }
        cmd
    }

    /// Checks that the files every user relies on are there.
    fn check(&self) -> Result<(), String> {
        for path in [
            self.loader(),
            self.render_server(),
            self.lib_dir().join("libvirglrenderer.so.1"),
        ] {
            if !path.exists() {
                return Err(format!("{} is missing", path.display()));
            }
        }
        Ok(())
    }
}

/// The hex SHA-256 that names a runtime: [`LAYOUT`], `full` and the packages.
pub fn runtime_key(packages: &[PackageRef], full: bool) -> String {
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    field(LAYOUT.as_bytes());
    field(if full { b"full" } else { b"pruned" });
    let mut sorted: Vec<&PackageRef> = packages.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    for p in sorted {
        field(p.name.as_bytes());
        field(p.version.as_bytes());
    }
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `<cache>/gpu-runtime`.
fn runtimes_dir(cache_root: &Path) -> PathBuf {
    cache_root.join("gpu-runtime")
}

/// The directory a runtime of `key` is published at.
fn published_dir(cache_root: &Path, key: &str) -> PathBuf {
    runtimes_dir(cache_root).join(&key[..16.min(key.len())])
}

/// Loads the runtime published at `dir`, if it is complete and (when given) has `key`.
fn load_published(dir: &Path, key: Option<&str>) -> Option<GpuRuntime> {
    let manifest: RuntimeManifest =
        serde_json::from_slice(&fs::read(dir.join("manifest.json")).ok()?).ok()?;
    if manifest.format != MANIFEST_FORMAT || key.is_some_and(|k| k != manifest.key) {
        return None;
    }
    let rt = GpuRuntime {
        root: dir.to_path_buf(),
        packages: manifest.packages,
    };
    rt.check().ok()?;
    Some(rt)
}

/// The runtime at `dir` (a published runtime directory, e.g. one copied elsewhere), if it is
/// complete and its manifest readable.
pub fn open_gpu_runtime(dir: &Path) -> Option<GpuRuntime> {
    load_published(dir, None)
}

/// The runtime `current` points at in the cache, if one is there and complete. Never touches
/// the network, never builds. `cache_dir` None: the default cache directory.
pub fn cached_gpu_runtime(cache_dir: Option<&Path>) -> Option<GpuRuntime> {
    let root = match cache_dir {
        Some(d) => d.to_path_buf(),
        None => Cache::default_dir().ok()?,
    };
    let current = runtimes_dir(&root).join("current");
    let target = fs::read_link(&current).ok()?;
    load_published(&runtimes_dir(&root).join(target), None)
}

/// Builds the GPU runtime into the cache, or reuses the published one when sid's packages
/// are unchanged (see the module documentation), and points `current` at it. Takes the
/// cache lock.
pub fn build_gpu_runtime(opts: GpuRuntimeOptions) -> Result<GpuRuntime, ImageError> {
    let cache = Cache::open(opts.cache_dir.as_deref())?;
    let say = |msg: &str| {
        if !opts.quiet {
            eprintln!("gpu-runtime: {msg}");
        }
    };
    let _lock = cache.lock()?;
    let top = runtimes_dir(cache.root());
    cache.ensure_dir(&top)?;
    let apt = Apt::new(&cache, GPU_RUNTIME_SUITE, opts.quiet)?.label("gpu-runtime");
    apt.update_if_stale()?;
    let packages = resolve(&apt, &top.join("resolved.json"))?;
    let key = runtime_key(&packages, opts.full);
    let dir = published_dir(cache.root(), &key);
    if let Some(rt) = load_published(&dir, Some(&key)) {
        say(&format!("up to date ({})", dir.display()));
        set_current(&top, &dir)?;
        return Ok(rt);
    }

    let started = std::time::Instant::now();
    let debs = apt.download_all(&packages, &cache.path("debs"))?;
    let staging = top.join(format!(".staging-{}", std::process::id()));
    let result = (|| {
        let _ = fs::remove_dir_all(&staging);
        fs::create_dir_all(&staging).map_err(io_err(&staging))?;
        say(&format!("extracting {} packages ...", debs.len()));
        for deb in &debs {
            debian::extract_deb_into(deb, &staging)?;
        }
        if !opts.full {
            prune(&staging)?;
        }
        let rt = GpuRuntime {
            root: staging.clone(),
            packages: packages.clone(),
        };
        rt.check().map_err(|what| ImageError::IncompleteRuntime {
            suite: GPU_RUNTIME_SUITE.to_string(),
            what,
        })?;
        write_versions(&staging, &packages)?;
        let manifest = RuntimeManifest {
            format: MANIFEST_FORMAT,
            key: key.clone(),
            suite: GPU_RUNTIME_SUITE.to_string(),
            full: opts.full,
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            size: tree_size(&staging),
            packages: packages.clone(),
        };
        debian::write_json(&staging.join("manifest.json"), &manifest)?;
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        }
        fs::rename(&staging, &dir).map_err(io_err(&dir))?;
        Ok::<u64, ImageError>(manifest.size)
    })();
    let size = match result {
        Ok(size) => size,
        Err(e) => {
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    let previous = set_current(&top, &dir)?;
    remove_old_runtimes(&top, &dir, previous.as_deref());
    say(&format!(
        "ready: {} ({} packages, {} MB, {:.1} s)",
        dir.display(),
        packages.len(),
        size / 1_000_000,
        started.elapsed().as_secs_f64()
    ));
    load_published(&dir, Some(&key)).ok_or_else(|| ImageError::Io {
        path: dir.join("manifest.json"),
        source: io::Error::other("the runtime just published cannot be read back"),
    })
}

/// The closure of [`ROOT_PACKAGES`] with versions: the last resolution while the lists are
/// unchanged, else a fresh one (recorded at `record`).
fn resolve(apt: &Apt, record: &Path) -> Result<Vec<PackageRef>, ImageError> {
    let stamp = apt.lists_stamp().unwrap_or(0);
    let roots: Vec<String> = ROOT_PACKAGES.iter().map(|s| s.to_string()).collect();
    let excluded: Vec<String> = EXCLUDED_PACKAGES.iter().map(|s| s.to_string()).collect();
    let previous: Option<Resolved> = fs::read(record)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    if let Some(r) = previous.filter(|r| {
        r.format == RESOLVED_FORMAT
            && r.lists_stamp == stamp
            && r.roots == roots
            && r.excluded == excluded
            && !r.packages.is_empty()
    }) {
        return Ok(r.packages);
    }
    let names = apt.depends_closure(ROOT_PACKAGES, EXCLUDED_PACKAGES)?;
    let packages = apt.candidate_versions(&names)?;
    debian::write_json(
        record,
        &Resolved {
            format: RESOLVED_FORMAT,
            lists_stamp: stamp,
            roots,
            excluded,
            packages: packages.clone(),
        },
    )?;
    Ok(packages)
}

/// Removes from an assembled runtime at `root` what PearVisor does not need: Mesa's Vulkan
/// drivers other than [`KEPT_VULKAN_DRIVERS`] (libraries and ICD manifests) and
/// [`PRUNED_SHARE_DIRS`]. Returns the bytes removed.
pub fn prune(root: &Path) -> Result<u64, ImageError> {
    let mut removed = 0;
    let lib = root.join(LIB_DIR);
    if let Ok(entries) = fs::read_dir(&lib) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let driver = name
                .strip_prefix("libvulkan_")
                .and_then(|n| n.strip_suffix(".so"));
            if driver.is_some_and(|d| !KEPT_VULKAN_DRIVERS.contains(&d)) {
                removed += remove_path(&entry.path())?;
            }
        }
    }
    let icd = root.join("usr/share/vulkan/icd.d");
    if let Ok(entries) = fs::read_dir(&icd) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            // lvp_icd.json, virtio_icd.json (some builds add the architecture: lvp_icd.x86_64.json).
            let driver = name.split("_icd.").next().unwrap_or_default();
            if !KEPT_VULKAN_DRIVERS.contains(&driver) {
                removed += remove_path(&entry.path())?;
            }
        }
    }
    for dir in PRUNED_SHARE_DIRS {
        removed += remove_path(&root.join("usr/share").join(dir))?;
    }
    Ok(removed)
}

/// Removes a file, link or tree if present; returns the bytes it held.
fn remove_path(path: &Path) -> Result<u64, ImageError> {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return Ok(0);
    };
    if meta.is_dir() {
        let size = tree_size(path);
        fs::remove_dir_all(path).map_err(io_err(path))?;
        Ok(size)
    } else {
        fs::remove_file(path).map_err(io_err(path))?;
        Ok(if meta.is_file() { meta.len() } else { 0 })
    }
}

/// Bytes of the regular files under `path` (links not followed).
pub fn tree_size(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    if meta.is_file() {
        return meta.len();
    }
    if !meta.is_dir() {
        return 0;
    }
    fs::read_dir(path)
        .map(|entries| entries.flatten().map(|e| tree_size(&e.path())).sum())
        .unwrap_or(0)
}

/// `VERSIONS`: one `package version` line per package, sorted by name.
pub fn versions_text(packages: &[PackageRef]) -> String {
    let sorted: BTreeMap<&str, &str> = packages
        .iter()
        .map(|p| (p.name.as_str(), p.version.as_str()))
        .collect();
    sorted
        .into_iter()
        .map(|(n, v)| format!("{n} {v}\n"))
        .collect()
}

fn write_versions(root: &Path, packages: &[PackageRef]) -> Result<(), ImageError> {
    let path = root.join("VERSIONS");
    fs::write(&path, versions_text(packages)).map_err(io_err(&path))
}

/// Points `<top>/current` at `dir` (atomically: a new link renamed over the old one); returns
/// the directory it pointed at before, if another.
fn set_current(top: &Path, dir: &Path) -> Result<Option<PathBuf>, ImageError> {
    let current = top.join("current");
    let name = dir.file_name().map(PathBuf::from).unwrap_or_default();
    let before = fs::read_link(&current).ok();
    if before.as_deref() == Some(name.as_path()) {
        return Ok(None);
    }
    let tmp = top.join(format!(".current-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&name, &tmp).map_err(io_err(&tmp))?;
    fs::rename(&tmp, &current).map_err(io_err(&current))?;
    Ok(before.map(|b| top.join(b)))
}

/// Removes published runtimes other than `keep` and `previous`, and staging leftovers of
/// builds that are no longer running. Best effort.
fn remove_old_runtimes(top: &Path, keep: &Path, previous: Option<&Path>) {
    let Ok(entries) = fs::read_dir(top) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if !is_dir || path == keep || Some(path.as_path()) == previous {
            continue;
        }
        let stale_staging = name
            .strip_prefix(".staging-")
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
        let published = name.len() == 16 && name.chars().all(|c| c.is_ascii_hexdigit());
        if stale_staging || published {
            let _ = fs::remove_dir_all(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pv-gpu-rt-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn touch(path: &Path, bytes: usize) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, vec![b'x'; bytes]).unwrap();
    }

    fn pkgs(list: &[(&str, &str)]) -> Vec<PackageRef> {
        list.iter()
            .map(|(n, v)| PackageRef {
                name: n.to_string(),
                version: v.to_string(),
            })
            .collect()
    }

    /// A fake runtime tree with the files `check` wants.
    fn fake_runtime(root: &Path) {
        touch(&root.join(LIB_DIR).join("ld-linux-x86-64.so.2"), 10);
        touch(&root.join(LIB_DIR).join("libvirglrenderer.so.1"), 10);
        touch(&root.join("usr/libexec/virgl_render_server"), 10);
    }

    #[test]
    fn prune_keeps_lavapipe_virtio_and_removes_docs() {
        let root = scratch("prune");
        let lib = root.join(LIB_DIR);
        for d in [
            "lvp",
            "virtio",
            "radeon",
            "intel",
            "intel_hasvk",
            "nouveau",
            "gfxstream",
            "asahi",
        ] {
            touch(&lib.join(format!("libvulkan_{d}.so")), 100);
            touch(
                &root.join(format!("usr/share/vulkan/icd.d/{d}_icd.json")),
                10,
            );
        }
        touch(
            &root.join("usr/share/vulkan/icd.d/radeon_icd.x86_64.json"),
            10,
        );
        touch(&lib.join("libvulkan.so.1"), 50);
        touch(&lib.join("libgallium-25.so"), 50);
        touch(&root.join("usr/share/doc/libc6/copyright"), 1000);
        touch(&root.join("usr/share/man/man1/x.1.gz"), 1000);
        touch(&root.join("usr/share/glvnd/egl_vendor.d/50_mesa.json"), 10);
        let removed = prune(&root).unwrap();
        assert_eq!(removed, 6 * 100 + 7 * 10 + 2000);
        let left = |p: &str| root.join(p).exists();
        assert!(left("usr/lib/x86_64-linux-gnu/libvulkan_lvp.so"));
        assert!(left("usr/lib/x86_64-linux-gnu/libvulkan_virtio.so"));
        assert!(left("usr/lib/x86_64-linux-gnu/libvulkan.so.1"));
        assert!(left("usr/lib/x86_64-linux-gnu/libgallium-25.so"));
        assert!(!left("usr/lib/x86_64-linux-gnu/libvulkan_radeon.so"));
        assert!(!left("usr/lib/x86_64-linux-gnu/libvulkan_intel_hasvk.so"));
        let icds: Vec<String> = fs::read_dir(root.join("usr/share/vulkan/icd.d"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(icds, ["lvp_icd.json", "virtio_icd.json"]);
        assert!(!left("usr/share/doc") && !left("usr/share/man"));
        assert!(left("usr/share/glvnd/egl_vendor.d/50_mesa.json"));
        assert_eq!(prune(&root).unwrap(), 0, "idempotent");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn key_tracks_packages_and_full_but_not_order() {
        let a = pkgs(&[("libc6", "2.42-1"), ("libvirglrenderer1", "1.3.0-1")]);
        let b = pkgs(&[("libvirglrenderer1", "1.3.0-1"), ("libc6", "2.42-1")]);
        let c = pkgs(&[("libc6", "2.42-2"), ("libvirglrenderer1", "1.3.0-1")]);
        assert_eq!(runtime_key(&a, false), runtime_key(&b, false));
        assert_ne!(runtime_key(&a, false), runtime_key(&c, false));
        assert_ne!(runtime_key(&a, false), runtime_key(&a, true));
        assert_eq!(runtime_key(&a, false).len(), 64);
    }

    #[test]
    fn versions_are_sorted_lines() {
        let p = pkgs(&[("zlib1g", "1:1.3"), ("libc6", "2.42-1")]);
        assert_eq!(versions_text(&p), "libc6 2.42-1\nzlib1g 1:1.3\n");
    }

    #[test]
    fn paths_env_and_command() {
        let rt = GpuRuntime {
            root: PathBuf::from("/rt"),
            packages: pkgs(&[("libvirglrenderer1", "1.3.0-1")]),
        };
        assert_eq!(
            rt.loader(),
            Path::new("/rt/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
        );
        assert_eq!(rt.lib_dir(), Path::new("/rt/usr/lib/x86_64-linux-gnu"));
        assert_eq!(
            rt.render_server(),
            Path::new("/rt/usr/libexec/virgl_render_server")
        );
        assert_eq!(rt.version_of("libvirglrenderer1"), Some("1.3.0-1"));
        assert_eq!(rt.version_of("libc6"), None);
        let env: BTreeMap<String, OsString> = rt.env().into_iter().collect();
        assert_eq!(
            env["VK_DRIVER_FILES"],
            OsString::from("/rt/usr/share/vulkan/icd.d/lvp_icd.json")
        );
        assert_eq!(
            env["__EGL_VENDOR_LIBRARY_FILENAMES"],
            OsString::from("/rt/usr/share/glvnd/egl_vendor.d/50_mesa.json")
        );
        assert_eq!(
            env["GBM_BACKENDS_PATH"],
            OsString::from("/rt/usr/lib/x86_64-linux-gnu/gbm")
        );
        assert_eq!(
            env["LIBGL_DRIVERS_PATH"],
            OsString::from("/rt/usr/lib/x86_64-linux-gnu/dri")
        );
        assert!(env.contains_key("VK_IMPLICIT_LAYER_PATH") && env.contains_key("VK_LAYER_PATH"));
        for value in env.values() {
            assert!(Path::new(value).starts_with("/rt"));
        }
        let cmd = rt.command(Path::new("/rt/usr/bin/virgl_test_server"));
        assert_eq!(cmd.get_program(), rt.loader().as_os_str());
        let args: Vec<_> = cmd.get_args().collect();
        assert_eq!(
            args,
            [
                "--inhibit-cache",
                "--library-path",
                "/rt/usr/lib/x86_64-linux-gnu",
                "/rt/usr/bin/virgl_test_server"
            ]
        );
        // Variables this process already has are left to it.
        let set: Vec<_> = cmd.get_envs().map(|(k, _)| k.to_owned()).collect();
        for (key, _) in rt.env() {
            assert_eq!(
                set.contains(&OsString::from(&key)),
                std::env::var_os(&key).is_none()
            );
        }
    }

    #[test]
    fn published_runtimes_are_found_reused_and_collected() {
        let cache = scratch("publish");
        let top = runtimes_dir(&cache);
        assert_eq!(cached_gpu_runtime(Some(&cache)), None, "empty cache");
        let packages = pkgs(&[("libc6", "2.42-1")]);
        let key = runtime_key(&packages, false);
        let dir = published_dir(&cache, &key);
        fake_runtime(&dir);
        let manifest = RuntimeManifest {
            format: MANIFEST_FORMAT,
            key: key.clone(),
            suite: "sid".into(),
            full: false,
            created: 0,
            size: 30,
            packages: packages.clone(),
        };
        debian::write_json(&dir.join("manifest.json"), &manifest).unwrap();
        assert!(load_published(&dir, Some(&key)).is_some());
        assert!(load_published(&dir, Some("other")).is_none(), "another key");
        assert_eq!(cached_gpu_runtime(Some(&cache)), None, "no current yet");

        assert_eq!(set_current(&top, &dir).unwrap(), None);
        let rt = cached_gpu_runtime(Some(&cache)).expect("current runtime");
        assert_eq!(rt.root, dir);
        assert_eq!(rt.packages, packages);

        // A second runtime becomes current; the first is kept as the previous one, older
        // ones and dead staging directories go.
        let key2 = runtime_key(&pkgs(&[("libc6", "2.42-2")]), false);
        let dir2 = published_dir(&cache, &key2);
        fake_runtime(&dir2);
        debian::write_json(
            &dir2.join("manifest.json"),
            &RuntimeManifest {
                key: key2.clone(),
                ..manifest.clone()
            },
        )
        .unwrap();
        let old = top.join("0123456789abcdef");
        fs::create_dir_all(&old).unwrap();
        let dead = top.join(".staging-4294967295");
        fs::create_dir_all(&dead).unwrap();
        let previous = set_current(&top, &dir2).unwrap();
        assert_eq!(previous.as_deref(), Some(dir.as_path()));
        remove_old_runtimes(&top, &dir2, previous.as_deref());
        assert!(dir.is_dir() && dir2.is_dir());
        assert!(!old.exists() && !dead.exists());
        assert_eq!(cached_gpu_runtime(Some(&cache)).unwrap().root, dir2);

        // A runtime missing its loader is not offered.
        fs::remove_file(dir2.join(LIB_DIR).join("ld-linux-x86-64.so.2")).unwrap();
        assert_eq!(cached_gpu_runtime(Some(&cache)), None);
        fs::write(dir.join("manifest.json"), b"{ not json").unwrap();
        assert!(load_published(&dir, None).is_none());
        fs::remove_dir_all(&cache).unwrap();
    }
}
