//! Debian packages through apt with a private configuration: the trixie 6.12 kernel and
//! busybox-static, downloaded and extracted into the cache.
//!
//! apt runs with its own sources list, lists, cache and configuration file under
//! `<cache>/apt/`; the system's sources, lists and package state are never written. Lists are
//! refreshed when older than a day (or missing). The packages resolved last are recorded in
//! `<cache>/manifest.json`; while the lists are unchanged that record is reused without
//! running apt at all.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::cache::{Cache, CacheError};
use crate::modules::{ModuleError, ModuleIndex};

/// The Debian suite every package comes from.
pub const SUITE: &str = "trixie";
/// The private sources list.
pub const SOURCES_LIST: &str = "deb http://deb.debian.org/debian trixie main\n";
/// The busybox package (its /usr/bin/busybox is statically linked).
pub const BUSYBOX_PACKAGE: &str = "busybox-static";
/// How old the package lists may get before `apt-get update` runs again.
pub const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// Settings of the private apt configuration, on top of the `-o` options: no post-invoke hooks
/// of the system's configuration (they clean the system's caches), no AppStream/translation
/// indexes (not needed).
const APT_CONF: &str = "\
#clear APT::Update::Post-Invoke;
#clear APT::Update::Post-Invoke-Success;
#clear DPkg::Post-Invoke;
Acquire::IndexTargets::deb::DEP-11::DefaultEnabled \"false\";
Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled \"false\";
Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled \"false\";
Acquire::IndexTargets::deb::DEP-11-icons-hidpi::DefaultEnabled \"false\";
Acquire::Languages \"none\";
";

const MANIFEST_FORMAT: u32 = 1;

/// Errors getting Debian packages.
#[derive(Debug, Error)]
pub enum DebianError {
    #[error("cache unavailable")]
    Cache(#[from] CacheError),
    #[error("cannot access {path}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "cannot run {program} (is it installed? scripts/setup-host.sh installs what is needed)"
    )]
    Spawn { program: String, source: io::Error },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("no package matches {0} in Debian trixie")]
    NotFound(String),
    #[error("package {package} has no {what}")]
    BadPackage { package: String, what: String },
    #[error("kernel modules of {release}")]
    Modules {
        release: String,
        source: ModuleError,
    },
}

/// A package name and its Debian version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageRef {
    pub name: String,
    pub version: String,
}

/// The cache's record of the packages resolved last (`<cache>/manifest.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheManifest {
    pub format: u32,
    /// Modification time (seconds) of the package lists the resolution used.
    pub lists_stamp: u64,
    /// The kernel package that was asked for (None: the newest 6.12).
    pub kernel_request: Option<String>,
    pub kernel: PackageRef,
    /// The kernel release (`uname -r`), e.g. `6.12.117+deb13-amd64`.
    pub kernel_release: String,
    pub busybox: PackageRef,
}

/// apt-get / apt-cache with the cache's private configuration.
#[derive(Debug, Clone)]
pub struct Apt {
    dir: PathBuf,
    quiet: bool,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DebianError + '_ {
    move |source| DebianError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_if_changed(path: &Path, content: &str) -> Result<(), DebianError> {
    if fs::read_to_string(path).ok().as_deref() != Some(content) {
        fs::write(path, content).map_err(io_err(path))?;
    }
    Ok(())
}

impl Apt {
    /// Sets up `<cache>/apt/` (sources list, configuration, lists and cache directories).
    pub fn new(cache: &Cache, quiet: bool) -> Result<Apt, DebianError> {
        let dir = cache.path("apt");
        for sub in ["lists/partial", "cache/archives/partial"] {
            cache.ensure_dir(&dir.join(sub))?;
        }
        write_if_changed(&dir.join("sources.list"), SOURCES_LIST)?;
        write_if_changed(&dir.join("apt.conf"), APT_CONF)?;
        Ok(Apt { dir, quiet })
    }

    fn options(&self) -> Vec<OsString> {
        let mut opts: Vec<OsString> = vec!["-c".into(), self.dir.join("apt.conf").into()];
        let mut o = |k: &str, v: &Path| {
            opts.push("-o".into());
            let mut s = OsString::from(format!("{k}="));
            s.push(v);
            opts.push(s);
        };
        o("Dir::Etc::SourceList", &self.dir.join("sources.list"));
        o("Dir::Etc::SourceParts", Path::new("/dev/null"));
        o("Dir::State::Lists", &self.dir.join("lists"));
        o("Dir::Cache", &self.dir.join("cache"));
        o("APT::Sandbox::User", Path::new("root"));
        opts
    }

    fn run(&self, program: &str, args: &[&str], cwd: Option<&Path>) -> Result<String, DebianError> {
        let mut cmd = Command::new(program);
        cmd.args(self.options()).args(args).stdin(Stdio::null());
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        run_command(cmd, &format!("{program} {}", args.join(" ")))
    }

    fn say(&self, msg: &str) {
        if !self.quiet {
            eprintln!("image: {msg}");
        }
    }

    fn stamp(&self) -> PathBuf {
        self.dir.join("updated")
    }

    /// Modification time (seconds since the epoch) of the last successful update, if any.
    pub fn lists_stamp(&self) -> Option<u64> {
        let mtime = fs::metadata(self.stamp()).ok()?.modified().ok()?;
        Some(mtime.duration_since(UNIX_EPOCH).ok()?.as_secs())
    }

    fn has_lists(&self) -> bool {
        fs::read_dir(self.dir.join("lists")).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
        })
    }

    /// Runs `apt-get update` when the lists are missing or older than [`LISTS_MAX_AGE`].
    /// When the update fails but older lists exist, they are used (with a warning).
    pub fn update_if_stale(&self) -> Result<(), DebianError> {
        let fresh = self.lists_stamp().is_some_and(|stamp| {
            let age = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|now| now.as_secs().saturating_sub(stamp))
                .unwrap_or(u64::MAX);
            age < LISTS_MAX_AGE.as_secs()
        });
        if fresh && self.has_lists() {
            return Ok(());
        }
        self.say(&format!("updating Debian {SUITE} package lists ..."));
        match self.update() {
            Ok(()) => Ok(()),
            Err(e) if self.has_lists() => {
                self.say(&format!("warning: {e}; using the existing package lists"));
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Runs `apt-get update` unconditionally.
    pub fn update(&self) -> Result<(), DebianError> {
        self.run("apt-get", &["-q", "update"], None)?;
        let stamp = self.stamp();
        fs::write(&stamp, b"").map_err(io_err(&stamp))
    }

    /// Package names matching the extended regular expression `regex`.
    pub fn search_names(&self, regex: &str) -> Result<Vec<String>, DebianError> {
        let out = self.run("apt-cache", &["search", "--names-only", regex], None)?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect())
    }

    /// The newest `linux-image-6.12.*+deb13-amd64` package (the real one, not the meta package).
    pub fn newest_kernel_package(&self) -> Result<String, DebianError> {
        let names = self.search_names(r"^linux-image-6\.12\.[0-9.]+\+deb13-amd64$")?;
        newest_kernel(&names)
            .ok_or_else(|| DebianError::NotFound("linux-image-6.12.*+deb13-amd64".to_string()))
    }

    /// The version apt would install for `package`.
    pub fn candidate_version(&self, package: &str) -> Result<String, DebianError> {
        let out = self.run("apt-cache", &["show", "--no-all-versions", package], None)?;
        out.lines()
            .find_map(|l| l.strip_prefix("Version:"))
            .map(|v| v.trim().to_string())
            .ok_or_else(|| DebianError::NotFound(package.to_string()))
    }

    /// Downloads `package` at `version` into `dir` (unless already there); returns the file.
    pub fn download(
        &self,
        package: &str,
        version: &str,
        dir: &Path,
    ) -> Result<PathBuf, DebianError> {
        if let Some(found) = find_deb(dir, package, version)? {
            return Ok(found);
        }
        self.say(&format!("downloading {package} {version} ..."));
        let partial = dir.join(format!(".partial-{}", std::process::id()));
        fs::create_dir_all(&partial).map_err(io_err(&partial))?;
        let result = (|| {
            self.run(
                "apt-get",
                &["-q", "download", &format!("{package}={version}")],
                Some(&partial),
            )?;
            let got = find_deb(&partial, package, version)?
                .ok_or_else(|| DebianError::NotFound(format!("{package}={version} (download)")))?;
            let name = got.file_name().map(PathBuf::from).unwrap_or_default();
            let dest = dir.join(name);
            fs::rename(&got, &dest).map_err(io_err(&dest))?;
            Ok(dest)
        })();
        let _ = fs::remove_dir_all(&partial);
        result
    }
}

/// Runs `cmd`, returning its stdout; a failure carries the end of its stderr.
fn run_command(mut cmd: Command, shown: &str) -> Result<String, DebianError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd
        .output()
        .map_err(|source| DebianError::Spawn { program, source })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(6).collect();
        return Err(DebianError::Command {
            command: shown.to_string(),
            status: out.status.to_string(),
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Picks the newest of `linux-image-6.12.N+deb13-amd64` names by numeric version.
pub fn newest_kernel(names: &[String]) -> Option<String> {
    names
        .iter()
        .filter_map(|n| {
            let ver = n
                .strip_prefix("linux-image-")?
                .strip_suffix("+deb13-amd64")?;
            let key: Option<Vec<u64>> = ver.split('.').map(|p| p.parse().ok()).collect();
            Some((key?, n))
        })
        .max()
        .map(|(_, n)| n.clone())
}

/// The file name apt gives a downloaded package starts with this (':' of an epoch is "%3a").
fn deb_prefix(package: &str, version: &str) -> String {
    format!("{package}_{}_", version.replace(':', "%3a"))
}

fn find_deb(dir: &Path, package: &str, version: &str) -> Result<Option<PathBuf>, DebianError> {
    let prefix = deb_prefix(package, version);
    let entries = fs::read_dir(dir).map_err(io_err(dir))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".deb") {
            return Ok(Some(entry.path()));
        }
    }
    Ok(None)
}

/// Extracts a .deb (`dpkg-deb -x`) into `dest`, which must not exist; it appears atomically.
pub fn extract_deb(deb: &Path, dest: &Path) -> Result<(), DebianError> {
    let mut tmp_name = dest.as_os_str().to_owned();
    tmp_name.push(format!(".extract-{}", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    let mut cmd = Command::new("dpkg-deb");
    cmd.arg("-x").arg(deb).arg(&tmp).stdin(Stdio::null());
    let result = run_command(cmd, &format!("dpkg-deb -x {}", deb.display()))
        .and_then(|_| fs::rename(&tmp, dest).map_err(io_err(dest)));
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

/// A downloaded and extracted kernel package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelPackage {
    pub package: PackageRef,
    /// The kernel release, e.g. `6.12.117+deb13-amd64`.
    pub release: String,
    /// The extracted package.
    pub root: PathBuf,
    /// `<root>/boot/vmlinuz-<release>`.
    pub vmlinuz: PathBuf,
}

impl KernelPackage {
    /// `<root>/usr/lib/modules/<release>`.
    pub fn modules_dir(&self) -> PathBuf {
        self.root.join("usr/lib/modules").join(&self.release)
    }

    /// Indexes the package's modules.
    pub fn module_index(&self) -> Result<ModuleIndex, DebianError> {
        ModuleIndex::scan(&self.modules_dir()).map_err(|source| DebianError::Modules {
            release: self.release.clone(),
            source,
        })
    }
}

/// The packages every PearVisor image is made of: the kernel and busybox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasePackages {
    pub kernel: KernelPackage,
    pub busybox_package: PackageRef,
    /// The static busybox binary inside the extracted package.
    pub busybox: PathBuf,
}

impl BasePackages {
    /// Package name → version, for manifests and cache keys.
    pub fn versions(&self) -> BTreeMap<String, String> {
        [&self.kernel.package, &self.busybox_package]
            .into_iter()
            .map(|p| (p.name.clone(), p.version.clone()))
            .collect()
    }
}

/// What [`fetch_base`] gets.
#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    /// An exact kernel package name (e.g. `linux-image-6.12.117+deb13-amd64`); None: the newest.
    pub kernel_package: Option<String>,
    /// No progress lines on stderr.
    pub quiet: bool,
}

/// Downloads (when needed) and extracts the kernel and busybox packages; takes the cache lock.
pub fn fetch_base(cache: &Cache, opts: &FetchOptions) -> Result<BasePackages, DebianError> {
    let _lock = cache.lock()?;
    let apt = Apt::new(cache, opts.quiet)?;
    apt.update_if_stale()?;
    let manifest_path = cache.path("manifest.json");
    let previous: Option<CacheManifest> = fs::read(&manifest_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let stamp = apt.lists_stamp().unwrap_or(0);

    // Reuse the last resolution while the lists have not changed.
    if let Some(m) = previous.as_ref().filter(|m| {
        m.format == MANIFEST_FORMAT
            && m.lists_stamp == stamp
            && m.kernel_request == opts.kernel_package
    }) {
        if let Ok(base) = assemble(cache, m) {
            return Ok(base);
        }
    }

    let kernel_name = match &opts.kernel_package {
        Some(name) => name.clone(),
        None => apt.newest_kernel_package()?,
    };
    let release = kernel_name
        .strip_prefix("linux-image-")
        .filter(|r| !r.is_empty())
        .ok_or_else(|| DebianError::BadPackage {
            package: kernel_name.clone(),
            what: "linux-image- prefix".to_string(),
        })?
        .to_string();
    let kernel = PackageRef {
        version: apt.candidate_version(&kernel_name)?,
        name: kernel_name,
    };
    let busybox = PackageRef {
        version: apt.candidate_version(BUSYBOX_PACKAGE)?,
        name: BUSYBOX_PACKAGE.to_string(),
    };
    let debs = cache.path("debs");
    for pkg in [&kernel, &busybox] {
        let dest = extracted_dir(cache, pkg);
        if !dest.is_dir() {
            let deb = apt.download(&pkg.name, &pkg.version, &debs)?;
            apt.say(&format!("extracting {}", pkg.name));
            extract_deb(&deb, &dest)?;
        }
    }
    let manifest = CacheManifest {
        format: MANIFEST_FORMAT,
        lists_stamp: stamp,
        kernel_request: opts.kernel_package.clone(),
        kernel,
        kernel_release: release,
        busybox,
    };
    let base = assemble(cache, &manifest)?;
    write_json(&manifest_path, &manifest)?;
    Ok(base)
}

/// `<cache>/pkgs/<name>_<version>`.
pub fn extracted_dir(cache: &Cache, pkg: &PackageRef) -> PathBuf {
    cache
        .path("pkgs")
        .join(format!("{}_{}", pkg.name, pkg.version.replace(':', "%3a")))
}

fn assemble(cache: &Cache, m: &CacheManifest) -> Result<BasePackages, DebianError> {
    let root = extracted_dir(cache, &m.kernel);
    let vmlinuz = root
        .join("boot")
        .join(format!("vmlinuz-{}", m.kernel_release));
    if !vmlinuz.is_file() {
        return Err(DebianError::BadPackage {
            package: m.kernel.name.clone(),
            what: format!("boot/vmlinuz-{}", m.kernel_release),
        });
    }
    let bb_root = extracted_dir(cache, &m.busybox);
    let busybox = ["usr/bin/busybox", "bin/busybox"]
        .iter()
        .map(|p| bb_root.join(p))
        .find(|p| p.is_file())
        .ok_or_else(|| DebianError::BadPackage {
            package: m.busybox.name.clone(),
            what: "/usr/bin/busybox".to_string(),
        })?;
    Ok(BasePackages {
        kernel: KernelPackage {
            package: m.kernel.clone(),
            release: m.kernel_release.clone(),
            root,
            vmlinuz,
        },
        busybox_package: m.busybox.clone(),
        busybox,
    })
}

/// Writes `value` as pretty JSON to `path` atomically.
pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), DebianError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| DebianError::Io {
        path: path.to_path_buf(),
        source: io::Error::other(e),
    })?;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    fs::write(&tmp, text + "\n").map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_kernel_is_numeric() {
        let names: Vec<String> = [
            "linux-image-6.12.9+deb13-amd64",
            "linux-image-6.12.117+deb13-amd64",
            "linux-image-6.12.107+deb13-amd64",
            "linux-image-6.12.200+deb13-amd64-unsigned",
            "linux-image-amd64",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            newest_kernel(&names).as_deref(),
            Some("linux-image-6.12.117+deb13-amd64")
        );
        assert_eq!(newest_kernel(&[]), None);
    }

    #[test]
    fn deb_file_names() {
        assert_eq!(
            deb_prefix("busybox-static", "1:1.37.0-6+b9"),
            "busybox-static_1%3a1.37.0-6+b9_"
        );
    }
}
