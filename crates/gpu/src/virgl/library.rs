//! Finding and loading libvirglrenderer at run time.
//!
//! One binary runs everywhere: `libvirglrenderer.so.1` is opened with
//! `dlopen` when a 3D context type is asked for, never linked. Its release
//! is read from the file the soname resolves to (libtool names it
//! `libvirglrenderer.so.1.<age>.<rev>`; the age counts releases), and what
//! PearVisor needs is checked before any guest runs: a missing or too old
//! library is an error that names what was found, what is needed and what
//! to install — never a silent fallback to 2D.

use std::ffi::{c_void, CStr};
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::ffi::VirglApi;

/// The soname PearVisor opens.
pub const LIBRARY_NAME: &str = "libvirglrenderer.so.1";

/// The oldest release PearVisor drives (Venus wire format 1, blob
/// resources, per-context fences, `get_server_fd`).
pub const MINIMUM_RELEASE: Release = Release { major: 1, minor: 1 };

/// What to tell a user whose library is missing or too old.
pub const INSTALL_HINT: &str = "install libvirglrenderer1 >= 1.1 (Debian trixie or newer), \
     or run `pearvisor gpu-runtime build` to assemble a GPU runtime that PearVisor runs under";

/// A virglrenderer release, major.minor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Release {
    pub major: u32,
    pub minor: u32,
}

impl fmt::Display for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl Release {
    /// The release behind a libtool file name `libvirglrenderer.so.1.<age>.<rev>`.
    /// Measured on Debian: age 7 is 0.10.4 (bookworm), 9 is 1.1.0 (trixie),
    /// 11 is 1.3.0 (sid); 8 and 10 are 1.0 and 1.2. Ages beyond are later
    /// 1.x releases.
    pub fn from_file_name(name: &str) -> Option<Release> {
        let rest = name.strip_prefix("libvirglrenderer.so.1.")?;
        let age: u32 = rest.split('.').next()?.parse().ok()?;
        match age {
            0..=6 => Some(Release { major: 0, minor: 9 }),
            7 => Some(Release {
                major: 0,
                minor: 10,
            }),
            n => Some(Release {
                major: 1,
                minor: n - 8,
            }),
        }
    }
}

/// Why the library cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LibraryError {
    #[error("{LIBRARY_NAME} not found ({detail}); GPU acceleration needs virglrenderer >= {MINIMUM_RELEASE}: {INSTALL_HINT}")]
    NotFound { detail: String },
    #[error("{path} cannot be loaded into this process ({detail}); {INSTALL_HINT}")]
    Unloadable { path: String, detail: String },
    #[error("virglrenderer {found} ({path}) is too old: PearVisor needs >= {MINIMUM_RELEASE}; {INSTALL_HINT}")]
    TooOld { found: Release, path: PathBuf },
    #[error("{path} lacks {symbol}: not a usable virglrenderer 1.x; {INSTALL_HINT}")]
    MissingSymbol { path: PathBuf, symbol: &'static str },
}

/// Where the library came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LibraryInfo {
    /// The file the soname resolved to.
    pub path: PathBuf,
    /// Its release, when the file name tells.
    pub release: Option<Release>,
}

impl fmt::Display for LibraryInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.release {
            Some(r) => write!(f, "virglrenderer {r} ({})", self.path.display()),
            None => write!(
                f,
                "virglrenderer of unknown release ({})",
                self.path.display()
            ),
        }
    }
}

/// A loaded libvirglrenderer and its entry points.
pub struct VirglLibrary {
    api: VirglApi,
    info: LibraryInfo,
    // Declared last: dropped after `api`, whose pointers point into it.
    _lib: libloading::Library,
}

impl VirglLibrary {
    /// Opens [`LIBRARY_NAME`] the way the dynamic loader finds it and checks
    /// its release and entry points.
    pub fn load() -> Result<VirglLibrary, LibraryError> {
        // SAFETY: loading virglrenderer runs its (and its dependencies')
        // initializers, which have no preconditions on this process.
        let lib = unsafe { libloading::Library::new(LIBRARY_NAME) }
            .map_err(|e| classify_dlerror(e.to_string()))?;
        // SAFETY: `virgl_renderer_init` is a function symbol; only its
        // address is used, to ask the loader which file it lives in.
        let anchor = unsafe { lib.get::<*mut c_void>(b"virgl_renderer_init\0") }
            .map(|s| *s)
            .map_err(|_| LibraryError::MissingSymbol {
                path: PathBuf::from(LIBRARY_NAME),
                symbol: "virgl_renderer_init",
            })?;
        let path = loaded_path(anchor).unwrap_or_else(|| PathBuf::from(LIBRARY_NAME));
        let info = LibraryInfo {
            release: path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(Release::from_file_name),
            path,
        };
        check_release(&info)?;
        // SAFETY: the library is virglrenderer 1.x (its release was checked).
        let api =
            unsafe { VirglApi::resolve(&lib) }.map_err(|symbol| LibraryError::MissingSymbol {
                path: info.path.clone(),
                symbol,
            })?;
        Ok(VirglLibrary {
            api,
            info,
            _lib: lib,
        })
    }

    /// Where the library came from.
    pub fn info(&self) -> &LibraryInfo {
        &self.info
    }

    /// The entry points.
    pub(super) fn api(&self) -> &VirglApi {
        &self.api
    }
}

/// Rejects releases older than [`MINIMUM_RELEASE`].
pub fn check_release(info: &LibraryInfo) -> Result<(), LibraryError> {
    match info.release {
        Some(r) if r < MINIMUM_RELEASE => Err(LibraryError::TooOld {
            found: r,
            path: info.path.clone(),
        }),
        _ => Ok(()),
    }
}

/// A dlopen failure: "not found" or "found but cannot load" (typically a
/// library built for a newer C library than this process has).
fn classify_dlerror(detail: String) -> LibraryError {
    if detail.contains("No such file") || detail.contains("cannot open shared object") {
        LibraryError::NotFound { detail }
    } else {
        let path = detail
            .split(':')
            .map(str::trim)
            .find(|part| part.contains(LIBRARY_NAME) || part.starts_with('/'))
            .unwrap_or(LIBRARY_NAME)
            .to_string();
        LibraryError::Unloadable { path, detail }
    }
}

/// The resolved file holding `addr`, through `dladdr`.
fn loaded_path(addr: *mut c_void) -> Option<PathBuf> {
    if addr.is_null() {
        return None;
    }
    let mut info = libc::Dl_info {
        dli_fname: std::ptr::null(),
        dli_fbase: std::ptr::null_mut(),
        dli_sname: std::ptr::null(),
        dli_saddr: std::ptr::null_mut(),
    };
    // SAFETY: dladdr only reads the loader's tables and fills `info`.
    let found = unsafe { libc::dladdr(addr, &mut info) };
    if found == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dladdr set dli_fname to a NUL-terminated string owned by the
    // loader, valid while the library stays loaded (it does: we hold it).
    let name = unsafe { CStr::from_ptr(info.dli_fname) };
    let path = Path::new(std::ffi::OsStr::from_bytes(name.to_bytes()));
    Some(std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_from_debian_file_names() {
        let r = |n: &str| Release::from_file_name(n);
        assert_eq!(
            r("libvirglrenderer.so.1.7.7"),
            Some(Release {
                major: 0,
                minor: 10
            })
        );
        assert_eq!(
            r("libvirglrenderer.so.1.9.0"),
            Some(Release { major: 1, minor: 1 })
        );
        assert_eq!(
            r("libvirglrenderer.so.1.11.0"),
            Some(Release { major: 1, minor: 3 })
        );
        assert_eq!(r("libvirglrenderer.so.1"), None);
        assert_eq!(r("libfoo.so.1.9.0"), None);
    }

    #[test]
    fn old_release_is_rejected_with_what_to_install() {
        let info = LibraryInfo {
            path: PathBuf::from("/usr/lib/x86_64-linux-gnu/libvirglrenderer.so.1.7.7"),
            release: Some(Release {
                major: 0,
                minor: 10,
            }),
        };
        let msg = check_release(&info).unwrap_err().to_string();
        assert!(msg.contains("virglrenderer 0.10"), "{msg}");
        assert!(msg.contains(">= 1.1"), "{msg}");
        assert!(msg.contains("pearvisor gpu-runtime build"), "{msg}");
        let new = LibraryInfo {
            release: Some(Release { major: 1, minor: 3 }),
            ..info
        };
        assert!(check_release(&new).is_ok());
    }

    #[test]
    fn dlopen_errors_are_classified() {
        let e = classify_dlerror(
            "libvirglrenderer.so.1: cannot open shared object file: No such file or directory"
                .into(),
        );
        assert!(matches!(e, LibraryError::NotFound { .. }), "{e}");
        let e = classify_dlerror(
            "/opt/rt/libvirglrenderer.so.1: /lib/x86_64-linux-gnu/libc.so.6: version `GLIBC_2.38' not found".into(),
        );
        match e {
            LibraryError::Unloadable { path, detail } => {
                assert_eq!(path, "/opt/rt/libvirglrenderer.so.1");
                assert!(detail.contains("GLIBC_2.38"));
            }
            other => panic!("{other}"),
        }
    }
}
