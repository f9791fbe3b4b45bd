//! Debian packages through apt with a private configuration: the trixie 6.12 kernel and
//! busybox-static, downloaded and extracted into the cache; the same machinery serves other
//! suites (the GPU runtime comes from sid, see [`crate::gpu_runtime`]).
//!
//! apt runs with its own sources list, lists, cache, (empty) package status and configuration
//! file under `<cache>/apt/<suite>/`; the system's sources, lists and package state are never
//! read or written. Lists are refreshed when older than a day (or missing). The packages
//! resolved last are recorded in `<cache>/manifest.json`; while the lists are unchanged that
//! record is reused without running apt at all.

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

/// The Debian suite the guest's packages (kernel, busybox, GPU userspace) come from.
pub const SUITE: &str = "trixie";
/// The Debian mirror every suite is fetched from.
pub const MIRROR: &str = "http://deb.debian.org/debian";
/// The busybox package (its /usr/bin/busybox is statically linked).
pub const BUSYBOX_PACKAGE: &str = "busybox-static";
/// How old the package lists may get before `apt-get update` runs again.
pub const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// The private sources list of `suite`.
pub fn sources_list(suite: &str) -> String {
    format!("deb {MIRROR} {suite} main\n")
}

/// Settings of the private apt configuration, on top of the `-o` options: amd64 only (whatever
/// foreign architectures the host has), no post-invoke hooks of the system's configuration
/// (they clean the system's caches), no AppStream/translation indexes (not needed).
const APT_CONF: &str = "\
APT::Architecture \"amd64\";
#clear APT::Architectures;
APT::Architectures { \"amd64\"; };
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
    #[error("no package matches {what} in Debian {suite}")]
    NotFound { what: String, suite: String },
    #[error("not a Debian suite name: {0:?}")]
    BadSuite(String),
    #[error("apt resolved no version for {0} (are the package lists complete? remove <cache>/apt and retry)")]
    NoVersion(String),
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

/// apt-get / apt-cache with the cache's private configuration for one suite.
#[derive(Debug, Clone)]
pub struct Apt {
    dir: PathBuf,
    suite: String,
    quiet: bool,
    label: &'static str,
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
    /// Sets up `<cache>/apt/<suite>/` (sources list, configuration, empty package status, lists
    /// and cache directories) for a Debian suite (`trixie`, `sid`, ...).
    pub fn new(cache: &Cache, suite: &str, quiet: bool) -> Result<Apt, DebianError> {
        if suite.is_empty() || !suite.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(DebianError::BadSuite(suite.to_string()));
        }
        let top = cache.path("apt");
        // Before suites had their own directories, trixie's lists lived in <cache>/apt/.
        for old in ["lists", "cache"] {
            let _ = fs::remove_dir_all(top.join(old));
        }
        for old in ["sources.list", "apt.conf", "updated"] {
            let _ = fs::remove_file(top.join(old));
        }
        let dir = top.join(suite);
        for sub in ["lists/partial", "cache/archives/partial"] {
            cache.ensure_dir(&dir.join(sub))?;
        }
        write_if_changed(&dir.join("sources.list"), &sources_list(suite))?;
        write_if_changed(&dir.join("apt.conf"), APT_CONF)?;
        write_if_changed(&dir.join("status"), "")?;
        Ok(Apt {
            dir,
            suite: suite.to_string(),
            quiet,
            label: "image",
        })
    }

    /// Prefixes progress lines with `label` (default "image").
    pub fn label(mut self, label: &'static str) -> Self {
        self.label = label;
        self
    }

    /// The suite this configuration fetches from.
    pub fn suite(&self) -> &str {
        &self.suite
    }

    fn not_found(&self, what: impl Into<String>) -> DebianError {
        DebianError::NotFound {
            what: what.into(),
            suite: self.suite.clone(),
        }
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
        o("Dir::State::status", &self.dir.join("status"));
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
            eprintln!("{}: {msg}", self.label);
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
        self.say(&format!("updating Debian {} package lists ...", self.suite));
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
        newest_kernel(&names).ok_or_else(|| self.not_found("linux-image-6.12.*+deb13-amd64"))
    }

    /// The version apt would install for `package`.
    pub fn candidate_version(&self, package: &str) -> Result<String, DebianError> {
        let out = self.run("apt-cache", &["show", "--no-all-versions", package], None)?;
        out.lines()
            .find_map(|l| l.strip_prefix("Version:"))
            .map(|v| v.trim().to_string())
            .ok_or_else(|| self.not_found(package))
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
                .ok_or_else(|| self.not_found(format!("{package}={version} (download)")))?;
            let name = got.file_name().map(PathBuf::from).unwrap_or_default();
            let dest = dir.join(name);
            fs::rename(&got, &dest).map_err(io_err(&dest))?;
            Ok(dest)
        })();
        let _ = fs::remove_dir_all(&partial);
        result
    }
}

impl Apt {
    /// The names of `roots` and every package they depend on, recursively (Depends and
    /// Pre-Depends only), sorted; virtual packages and `exclude` are left out.
    pub fn depends_closure(
        &self,
        roots: &[&str],
        exclude: &[&str],
    ) -> Result<Vec<String>, DebianError> {
        let mut args = vec![
            "depends",
            "--recurse",
            "--no-recommends",
            "--no-suggests",
            "--no-conflicts",
            "--no-breaks",
            "--no-replaces",
            "--no-enhances",
        ];
        args.extend_from_slice(roots);
        let out = self.run("apt-cache", &args, None)?;
        let names = parse_depends_closure(&out, exclude);
        if let Some(missing) = roots.iter().find(|r| !names.iter().any(|n| n == *r)) {
            return Err(self.not_found(*missing));
        }
        Ok(names)
    }

    /// The versions apt would install for `packages` (one `apt-cache show` for all), in the
    /// order given.
    pub fn candidate_versions(&self, packages: &[String]) -> Result<Vec<PackageRef>, DebianError> {
        if packages.is_empty() {
            return Ok(Vec::new());
        }
        let mut args = vec!["show", "--no-all-versions"];
        args.extend(packages.iter().map(String::as_str));
        let out = self.run("apt-cache", &args, None)?;
        let found = parse_show_versions(&out);
        packages
            .iter()
            .map(|name| {
                found
                    .get(name)
                    .map(|version| PackageRef {
                        name: name.clone(),
                        version: version.clone(),
                    })
                    .ok_or_else(|| DebianError::NoVersion(name.clone()))
            })
            .collect()
    }

    /// Downloads every package of `packages` that is not in `dir` yet, with one `apt-get
    /// download`; returns the .deb of each, in the order given.
    pub fn download_all(
        &self,
        packages: &[PackageRef],
        dir: &Path,
    ) -> Result<Vec<PathBuf>, DebianError> {
        let mut missing = Vec::new();
        for p in packages {
            if find_deb(dir, &p.name, &p.version)?.is_none() {
                missing.push(format!("{}={}", p.name, p.version));
            }
        }
        if !missing.is_empty() {
            self.say(&format!(
                "downloading {} packages from Debian {} ...",
                missing.len(),
                self.suite
            ));
            let partial = dir.join(format!(".partial-{}", std::process::id()));
            let _ = fs::remove_dir_all(&partial);
            fs::create_dir_all(&partial).map_err(io_err(&partial))?;
            let result = (|| {
                let mut args = vec!["-q", "download"];
                args.extend(missing.iter().map(String::as_str));
                self.run("apt-get", &args, Some(&partial))?;
                let entries = fs::read_dir(&partial).map_err(io_err(&partial))?;
                for entry in entries.flatten() {
                    let dest = dir.join(entry.file_name());
                    fs::rename(entry.path(), &dest).map_err(io_err(&dest))?;
                }
                Ok::<(), DebianError>(())
            })();
            let _ = fs::remove_dir_all(&partial);
            result?;
        }
        packages
            .iter()
            .map(|p| {
                find_deb(dir, &p.name, &p.version)?
                    .ok_or_else(|| self.not_found(format!("{}={} (download)", p.name, p.version)))
            })
            .collect()
    }
}

/// The package names in `apt-cache depends --recurse` output: the unindented lines, without
/// virtual packages (`<name>`) and `exclude`; sorted, without duplicates. An architecture
/// qualifier (`name:amd64`) is dropped.
pub fn parse_depends_closure(output: &str, exclude: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = output
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with([' ', '\t', '<', '|']))
        .map(|l| l.trim().split(':').next().unwrap_or_default().to_string())
        .filter(|n| !n.is_empty() && !exclude.contains(&n.as_str()))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Package → version from `apt-cache show` stanzas (the first stanza of a package wins).
pub fn parse_show_versions(output: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for stanza in output.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
        };
        if let (Some(p), Some(v)) = (field("Package:"), field("Version:")) {
            out.entry(p).or_insert(v);
        }
    }
    out
}

/// Extracts a .deb (`dpkg-deb -x`) into the existing directory `dest`, merging with what is
/// there.
pub fn extract_deb_into(deb: &Path, dest: &Path) -> Result<(), DebianError> {
    let mut cmd = Command::new("dpkg-deb");
    cmd.arg("-x").arg(deb).arg(dest).stdin(Stdio::null());
    run_command(cmd, &format!("dpkg-deb -x {}", deb.display())).map(|_| ())
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
    let apt = Apt::new(cache, SUITE, opts.quiet)?;
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
    fn depends_closure_parsing() {
        let out = "\
mesa-vulkan-drivers
  Depends: libvulkan1
  Depends: <libgl1-virtual>
 |Depends: libfoo
  Depends: libc6
libvulkan1
  Depends: libc6
<debconf-2.0>
libc6
  Depends: libgcc-s1
libgcc-s1
debconf
libfoo:amd64
";
        assert_eq!(
            parse_depends_closure(out, &["debconf"]),
            [
                "libc6",
                "libfoo",
                "libgcc-s1",
                "libvulkan1",
                "mesa-vulkan-drivers"
            ]
        );
        assert!(parse_depends_closure("", &[]).is_empty());
    }

    #[test]
    fn show_versions_parsing() {
        let out = "\
Package: libc6
Version: 2.41-12
Architecture: amd64
Description: GNU C Library

Package: libllvm19
Source: llvm-toolchain-19
Version: 1:19.1.7-3+b1

Package: libc6
Version: 2.40-1
";
        let v = parse_show_versions(out);
        assert_eq!(v.len(), 2);
        assert_eq!(v["libc6"], "2.41-12");
        assert_eq!(v["libllvm19"], "1:19.1.7-3+b1");
    }

    #[test]
    fn sources_per_suite() {
        assert_eq!(
            sources_list("sid"),
            "deb http://deb.debian.org/debian sid main\n"
        );
    }

    #[test]
    fn deb_file_names() {
        assert_eq!(
            deb_prefix("busybox-static", "1:1.37.0-6+b9"),
            "busybox-static_1%3a1.37.0-6+b9_"
        );
    }
}
