//! pv-image: PearVisor's default guest image, built reproducibly from Debian packages.
//!
//! The image is a stock Debian trixie 6.12 kernel (`linux-image-6.12.*+deb13-amd64`) and an
//! initramfs holding busybox-static, the guest kernel modules PearVisor's devices need
//! (decompressed, in dependency order), a busybox `/init` ([`init::DEFAULT_INIT`]) and any extra
//! files, e.g. test scripts under `/pv-tests/`.
//!
//! ```no_run
//! let image = pv_image::build_default_image(pv_image::ImageOptions::default())?;
//! println!("{} {}", image.kernel.display(), image.initrd.display());
//! # Ok::<(), pv_image::ImageError>(())
//! ```
//!
//! The building blocks are public for other harnesses (pv-testkit builds its L1 machine with
//! them): [`Cache`], [`debian::fetch_base`], [`modules::ModuleIndex`], [`cpio::Initramfs`].

pub mod cache;
pub mod cpio;
pub mod debian;
pub mod elf;
pub mod gpu_runtime;
pub mod gpu_userspace;
pub mod init;
pub mod modules;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

pub use cache::{Cache, CacheError, CacheLock};
pub use cpio::{Compression, CpioError, Initramfs};
pub use debian::{fetch_base, BasePackages, DebianError, FetchOptions, KernelPackage, PackageRef};
pub use elf::ElfError;
pub use gpu_runtime::{
    build_gpu_runtime, cached_gpu_runtime, open_gpu_runtime, GpuRuntime, GpuRuntimeOptions,
};
pub use gpu_userspace::{GpuUserspace, GpuUserspaceError, GuestGpuFiles};
pub use modules::{ModuleError, ModuleFile, ModuleIndex};

/// The guest modules loaded by default, for PearVisor's virtio devices (block, rng, GPU,
/// input) and the ACPI power button (`button`, which `evdev` exposes to the power watcher).
/// Names built into the kernel are skipped; dependencies are added.
pub const DEFAULT_GUEST_MODULES: &[&str] = &[
    "virtio_blk",
    "virtio-rng",
    "drm",
    "drm_kms_helper",
    "drm_shmem_helper",
    "virtio_dma_buf",
    "virtio-gpu",
    "virtio_input",
    "evdev",
    "button",
];

/// Bumped whenever the image layout produced by this crate changes, to invalidate old images.
const IMAGE_FORMAT: &str = "pv-image/2";

/// Errors building an image.
#[derive(Debug, Error)]
pub enum ImageError {
    #[error("cache unavailable")]
    Cache(#[from] CacheError),
    #[error("cannot get the Debian packages")]
    Debian(#[from] DebianError),
    #[error("cannot resolve the guest kernel modules")]
    Modules(#[from] ModuleError),
    #[error("cannot assemble the guest's GPU userspace")]
    GpuUserspace(#[from] GpuUserspaceError),
    #[error("cannot write the initramfs")]
    Cpio(#[from] CpioError),
    #[error("cannot access {path}")]
    Io { path: PathBuf, source: io::Error },
    #[error("invalid destination for an extra file: {0:?} (must be absolute, without '..')")]
    InvalidPath(PathBuf),
    #[error("the GPU runtime assembled from Debian {suite} is incomplete: {what} (the packages may have changed; report it)")]
    IncompleteRuntime { suite: String, what: String },
}

/// A built guest image: boot `kernel` with `initrd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImage {
    /// The bzImage (`.../boot/vmlinuz-<release>` inside the extracted package).
    pub kernel: PathBuf,
    /// The initramfs (`<cache>/images/<key>/initrd.img`).
    pub initrd: PathBuf,
    /// The kernel release, e.g. `6.12.117+deb13-amd64`.
    pub kernel_version: String,
    /// Debian package name → version of what the image is made of (the GPU userspace's
    /// packages included).
    pub packages: BTreeMap<String, String>,
    /// The module files in the initramfs, in load order.
    pub modules: Vec<String>,
    /// The GPU userspace it carries.
    pub gpu_userspace: GpuUserspace,
}

/// What goes into the image.
#[derive(Debug, Clone)]
pub struct ImageOptions {
    /// Extra files: (absolute destination in the image, contents, permission bits).
    pub extra_files: Vec<(PathBuf, Vec<u8>, u32)>,
    /// Modules to load (dependencies are added, built-ins skipped). Default:
    /// [`DEFAULT_GUEST_MODULES`]; empty: none.
    pub modules: Vec<String>,
    /// Replaces [`init::DEFAULT_INIT`] as `/init`.
    pub init_script: Option<String>,
    /// An exact kernel package (e.g. `linux-image-6.12.117+deb13-amd64`); None: the newest 6.12.
    pub kernel_package: Option<String>,
    /// The cache directory; None: `$PEARVISOR_CACHE`, `$XDG_CACHE_HOME/pearvisor`,
    /// `~/.cache/pearvisor`.
    pub cache_dir: Option<PathBuf>,
    /// Compression of the initramfs (default gzip).
    pub compression: Compression,
    /// The GPU userspace in the image (default [`GpuUserspace::Full`]: Venus Vulkan and
    /// virgl GL; see [`gpu_userspace`]).
    pub gpu_userspace: GpuUserspace,
    /// No progress lines on stderr.
    pub quiet: bool,
}

impl Default for ImageOptions {
    fn default() -> Self {
        ImageOptions {
            extra_files: Vec::new(),
            modules: DEFAULT_GUEST_MODULES
                .iter()
                .map(|m| m.to_string())
                .collect(),
            init_script: None,
            kernel_package: None,
            cache_dir: None,
            compression: Compression::default(),
            gpu_userspace: GpuUserspace::default(),
            quiet: false,
        }
    }
}

/// Builds the default image with `opts`. Same as `ImageBuilder::with_options(opts).build()`.
pub fn build_default_image(opts: ImageOptions) -> Result<GuestImage, ImageError> {
    ImageBuilder::with_options(opts).build()
}

/// Builder over [`ImageOptions`].
#[derive(Debug, Clone, Default)]
pub struct ImageBuilder {
    opts: ImageOptions,
}

/// What the image's initramfs is keyed by; see [`cache_key`].
#[derive(Debug, Clone, Copy)]
pub struct KeyInputs<'a> {
    /// Package name → version.
    pub packages: &'a BTreeMap<String, String>,
    /// Module file names in load order.
    pub modules: &'a [String],
    pub init_script: &'a str,
    pub extra_files: &'a [(PathBuf, Vec<u8>, u32)],
    pub compression: Compression,
    pub gpu_userspace: GpuUserspace,
}

/// The hex SHA-256 over everything that determines the initramfs's contents.
pub fn cache_key(inputs: &KeyInputs<'_>) -> String {
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    field(IMAGE_FORMAT.as_bytes());
    field(init::PROFILE.as_bytes());
    field(init::PASSWD.as_bytes());
    field(init::GROUP.as_bytes());
    for (name, version) in inputs.packages {
        field(name.as_bytes());
        field(version.as_bytes());
    }
    field(b"modules");
    for m in inputs.modules {
        field(m.as_bytes());
    }
    field(b"init");
    field(inputs.init_script.as_bytes());
    field(b"extra");
    let mut extra: Vec<_> = inputs.extra_files.iter().collect();
    extra.sort_by(|a, b| a.0.cmp(&b.0));
    for (dest, content, mode) in extra {
        field(dest.as_os_str().as_encoded_bytes());
        field(&mode.to_le_bytes());
        field(content);
    }
    field(format!("{:?}", inputs.compression).as_bytes());
    field(inputs.gpu_userspace.name().as_bytes());
    h.finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
}

/// The common skeleton of PearVisor's initramfs images: the usual directories, busybox at
/// `/bin/busybox` (applet links are made at boot by `busybox --install -s`), `/etc/passwd`,
/// `/etc/group`, `/etc/profile`.
pub fn busybox_skeleton(busybox: &Path) -> Result<Initramfs, CpioError> {
    let mut fs = Initramfs::new();
    for dir in [
        "/bin",
        "/sbin",
        "/usr/bin",
        "/usr/sbin",
        "/proc",
        "/sys",
        "/dev",
        "/run",
        "/root",
        "/etc",
        "/lib",
        "/mnt",
    ] {
        fs.dir(dir, 0o755)?;
    }
    fs.dir("/tmp", 0o1777)?;
    fs.dir("/root", 0o700)?;
    fs.file_from_host("/bin/busybox", busybox, 0o755)?;
    fs.file("/etc/passwd", init::PASSWD, 0o644)?;
    fs.file("/etc/group", init::GROUP, 0o644)?;
    fs.file("/etc/profile", init::PROFILE, 0o644)?;
    Ok(fs)
}

/// The guest initramfs tree: [`busybox_skeleton`], modules with `load.list`, the GPU
/// userspace, `/init`, extra files (which may replace anything else).
pub fn guest_initramfs(
    busybox: &Path,
    modules: &[ModuleFile],
    gpu: &GuestGpuFiles,
    init_script: &str,
    extra_files: &[(PathBuf, Vec<u8>, u32)],
) -> Result<Initramfs, ImageError> {
    let mut fs = busybox_skeleton(busybox)?;
    fs.dir(init::TESTS_DIR, 0o755)?;
    modules::add_to_initramfs(&mut fs, modules)?;
    gpu.add_to(&mut fs)?;
    fs.file("/init", init_script, 0o755)?;
    for (dest, content, mode) in extra_files {
        fs.file(dest, content.clone(), *mode).map_err(|e| match e {
            CpioError::InvalidPath(p) => ImageError::InvalidPath(p),
            other => ImageError::Cpio(other),
        })?;
    }
    Ok(fs)
}

#[derive(Debug, Serialize, Deserialize)]
struct ImageManifest {
    key: String,
    kernel: PathBuf,
    kernel_version: String,
    packages: BTreeMap<String, String>,
    modules: Vec<String>,
    extra_files: Vec<PathBuf>,
    compression: Compression,
    gpu_userspace: GpuUserspace,
}

impl ImageBuilder {
    /// A builder with the default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// A builder starting from `opts`.
    pub fn with_options(opts: ImageOptions) -> Self {
        ImageBuilder { opts }
    }

    /// Adds a file to the image.
    pub fn extra_file(
        mut self,
        dest: impl Into<PathBuf>,
        content: impl Into<Vec<u8>>,
        mode: u32,
    ) -> Self {
        self.opts
            .extra_files
            .push((dest.into(), content.into(), mode));
        self
    }

    /// Adds `/pv-tests/NAME.sh` (run by the guest when booted with `pv.test=NAME`).
    pub fn test_script(self, name: &str, script: impl Into<Vec<u8>>) -> Self {
        self.extra_file(format!("{}/{name}.sh", init::TESTS_DIR), script, 0o755)
    }

    /// Replaces the module list.
    pub fn modules<S: Into<String>>(mut self, modules: impl IntoIterator<Item = S>) -> Self {
        self.opts.modules = modules.into_iter().map(Into::into).collect();
        self
    }

    /// Replaces `/init`.
    pub fn init_script(mut self, script: impl Into<String>) -> Self {
        self.opts.init_script = Some(script.into());
        self
    }

    /// Pins the kernel package.
    pub fn kernel_package(mut self, package: impl Into<String>) -> Self {
        self.opts.kernel_package = Some(package.into());
        self
    }

    /// Uses `dir` as the cache.
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.opts.cache_dir = Some(dir.into());
        self
    }

    /// Sets the initramfs compression.
    pub fn compression(mut self, compression: Compression) -> Self {
        self.opts.compression = compression;
        self
    }

    /// Sets how much GPU userspace the image carries.
    pub fn gpu_userspace(mut self, level: GpuUserspace) -> Self {
        self.opts.gpu_userspace = level;
        self
    }

    /// Silences progress lines.
    pub fn quiet(mut self, quiet: bool) -> Self {
        self.opts.quiet = quiet;
        self
    }

    /// The options so far.
    pub fn options(&self) -> &ImageOptions {
        &self.opts
    }

    /// Gets the packages (downloading what is missing) and builds the initramfs unless an
    /// identical one is cached.
    pub fn build(&self) -> Result<GuestImage, ImageError> {
        let opts = &self.opts;
        for (dest, _, _) in &opts.extra_files {
            if !dest.is_absolute()
                || dest
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(ImageError::InvalidPath(dest.clone()));
            }
        }
        let cache = Cache::open(opts.cache_dir.as_deref())?;
        let base = fetch_base(
            &cache,
            &FetchOptions {
                kernel_package: opts.kernel_package.clone(),
                quiet: opts.quiet,
            },
        )?;
        let index = base.kernel.module_index()?;
        let modules = index.resolve(&opts.modules)?;
        let module_names: Vec<String> = modules.iter().map(|m| m.file_name.clone()).collect();
        let init_script = opts.init_script.as_deref().unwrap_or(init::DEFAULT_INIT);
        let gpu = gpu_userspace::fetch_gpu_userspace(&cache, opts.gpu_userspace, opts.quiet)?;
        let mut packages = base.versions();
        packages.extend(gpu.packages.clone());
        let key = cache_key(&KeyInputs {
            packages: &packages,
            modules: &module_names,
            init_script,
            extra_files: &opts.extra_files,
            compression: opts.compression,
            gpu_userspace: opts.gpu_userspace,
        });
        let dir = cache.path("images").join(&key[..16]);
        let initrd = dir.join("initrd.img");
        let manifest_path = dir.join("manifest.json");
        let image = GuestImage {
            kernel: base.kernel.vmlinuz.clone(),
            initrd: initrd.clone(),
            kernel_version: base.kernel.release.clone(),
            packages: packages.clone(),
            modules: module_names.clone(),
            gpu_userspace: opts.gpu_userspace,
        };

        let _lock = cache.lock()?;
        let cached = fs::read(&manifest_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<ImageManifest>(&b).ok())
            .is_some_and(|m| m.key == key);
        if cached && initrd.is_file() {
            if !opts.quiet {
                eprintln!("image: initramfs up to date ({})", initrd.display());
            }
            return Ok(image);
        }
        if !opts.quiet {
            eprintln!(
                "image: building initramfs ({} modules, GPU userspace {}: {} files, {} MB; {} extra files)",
                module_names.len(),
                opts.gpu_userspace.name(),
                gpu.files.len(),
                gpu.size() / 1_000_000,
                opts.extra_files.len()
            );
        }
        cache.ensure_dir(&dir)?;
        let tree = guest_initramfs(
            &base.busybox,
            &modules,
            &gpu,
            init_script,
            &opts.extra_files,
        )?;
        tree.write_file(&initrd, opts.compression)?;
        let manifest = ImageManifest {
            key,
            kernel: image.kernel.clone(),
            kernel_version: image.kernel_version.clone(),
            packages,
            modules: module_names,
            extra_files: opts.extra_files.iter().map(|f| f.0.clone()).collect(),
            compression: opts.compression,
            gpu_userspace: opts.gpu_userspace,
        };
        debian::write_json(&manifest_path, &manifest)?;
        if !opts.quiet {
            eprintln!("image: initramfs ready ({})", initrd.display());
        }
        Ok(image)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_with(init: &str, extra: &[(PathBuf, Vec<u8>, u32)]) -> String {
        let packages: BTreeMap<String, String> = [
            (
                "linux-image-6.12.117+deb13-amd64".into(),
                "6.12.117-1".into(),
            ),
            ("busybox-static".into(), "1:1.37.0-6+b9".into()),
        ]
        .into_iter()
        .collect();
        let modules = vec!["virtio_blk.ko".to_string()];
        cache_key(&KeyInputs {
            packages: &packages,
            modules: &modules,
            init_script: init,
            extra_files: extra,
            compression: Compression::Gzip,
            gpu_userspace: GpuUserspace::Full,
        })
    }

    #[test]
    fn cache_key_tracks_inputs() {
        let base = key_with(init::DEFAULT_INIT, &[]);
        assert_eq!(base.len(), 64);
        assert_eq!(base, key_with(init::DEFAULT_INIT, &[]), "stable");
        let changed_init = format!("{}\n# changed\n", init::DEFAULT_INIT);
        assert_ne!(
            base,
            key_with(&changed_init, &[]),
            "init script changes the key"
        );
        let extra = [(PathBuf::from("/pv-tests/a.sh"), b"echo a".to_vec(), 0o755)];
        let with_extra = key_with(init::DEFAULT_INIT, &extra);
        assert_ne!(base, with_extra);
        let extra_mode = [(PathBuf::from("/pv-tests/a.sh"), b"echo a".to_vec(), 0o644)];
        assert_ne!(with_extra, key_with(init::DEFAULT_INIT, &extra_mode));
    }

    #[test]
    fn init_script_has_the_contract() {
        let init = init::DEFAULT_INIT;
        assert!(init.starts_with("#!/bin/busybox sh\n"));
        for needle in [
            "mount -t proc",
            "mount -t sysfs",
            "mount -t devtmpfs devtmpfs /dev",
            "tmpfs /tmp",
            "tmpfs /run",
            "--install -s",
            "/lib/modules/load.list",
            "hostname pearvisor",
            "echo PEARVISOR-GUEST-READY",
            "pv.test=*",
            "echo \"PV-TEST-EXIT rc=$rc\"",
            "poweroff -f",
            "Power Button",
            "setsid cttyhack sh -l",
        ] {
            assert!(init.contains(needle), "init lacks {needle:?}");
        }
        assert!(init.contains(init::READY_MARKER));
        assert!(init.contains(init::TEST_EXIT_MARKER));
    }

    #[test]
    fn guest_tree_layout() {
        let dir = std::env::temp_dir().join(format!("pv-image-tree-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let bb = dir.join("busybox");
        fs::write(&bb, b"\x7fELF fake busybox").unwrap();
        let ko = dir.join("virtio_blk.ko");
        fs::write(&ko, modules::tests::synthetic_module(b"depends=\0")).unwrap();
        let mods = vec![ModuleFile {
            name: "virtio_blk".into(),
            path: ko,
            file_name: "virtio_blk.ko".into(),
        }];
        let extra = [(
            PathBuf::from("/pv-tests/boot.sh"),
            b"true\n".to_vec(),
            0o755,
        )];
        let tree = guest_initramfs(
            &bb,
            &mods,
            &GuestGpuFiles::default(),
            init::DEFAULT_INIT,
            &extra,
        )
        .unwrap();
        let out = dir.join("initrd.img");
        tree.write_file(&out, Compression::Gzip).unwrap();
        let entries = cpio::read_archive(&out).unwrap();
        let get = |n: &str| {
            entries
                .iter()
                .find(|e| e.name == n)
                .unwrap_or_else(|| panic!("{n}"))
        };
        assert_eq!(get("init").permissions(), 0o755);
        assert!(get("init").data.starts_with(b"#!/bin/busybox sh"));
        assert_eq!(get("bin/busybox").data, b"\x7fELF fake busybox");
        assert_eq!(get("lib/modules/load.list").data, b"virtio_blk.ko\n");
        assert!(get("lib/modules/virtio_blk.ko").is_file());
        assert_eq!(get("pv-tests/boot.sh").data, b"true\n");
        assert!(get("tmp").is_dir());
        assert_eq!(get("tmp").permissions(), 0o1777);
        assert!(entries.iter().all(|e| !e.name.starts_with("dev/")));

        let bad = [(PathBuf::from("../x"), Vec::new(), 0o644)];
        assert!(matches!(
            guest_initramfs(&bb, &mods, &GuestGpuFiles::default(), "", &bad),
            Err(ImageError::InvalidPath(_))
        ));
        fs::remove_dir_all(&dir).unwrap();
    }
}
