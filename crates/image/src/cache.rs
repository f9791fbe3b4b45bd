//! The PearVisor cache directory (`$PEARVISOR_CACHE`, `$XDG_CACHE_HOME/pearvisor` or
//! `~/.cache/pearvisor`) and the lock that serializes builders across processes and threads.
//!
//! Layout:
//! ```text
//! <cache>/lock                  flock(2) taken while packages or images are prepared
//! <cache>/manifest.json         packages resolved last (name → Debian version), kernel release
//! <cache>/apt/<suite>/          private apt configuration, package lists, apt's own cache
//! <cache>/debs/                 downloaded .deb files
//! <cache>/pkgs/<name>_<ver>/    extracted packages (dpkg-deb -x), never modified afterwards
//! <cache>/gpu-userspace-<level>.json  the guest GPU userspace's packages resolved last
//! <cache>/images/<key>/         built guest initramfs (initrd.img) + manifest.json, by input hash
//! <cache>/gpu-runtime/          the host GPU runtime from sid (see crate::gpu_runtime)
//! <cache>/tmp/                  scratch files of running builds and nested machines
//! ```

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use thiserror::Error;

/// The environment variable that overrides the cache directory.
pub const CACHE_ENV: &str = "PEARVISOR_CACHE";

/// Files in `<cache>/tmp/` older than this are leftovers of crashed runs.
const STALE_TEMP_AGE: Duration = Duration::from_secs(24 * 3600);

/// Errors opening or locking the cache.
#[derive(Debug, Error)]
pub enum CacheError {
    #[error("no cache directory: set PEARVISOR_CACHE, XDG_CACHE_HOME or HOME")]
    NoDirectory,
    #[error("cannot create or use cache directory {path}")]
    Io { path: PathBuf, source: io::Error },
}

/// An opened cache directory.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

/// Holds the cache's exclusive lock until dropped.
#[derive(Debug)]
pub struct CacheLock {
    _file: File,
}

impl Cache {
    /// The cache directory the environment selects.
    pub fn default_dir() -> Result<PathBuf, CacheError> {
        let non_empty = |v: &str| std::env::var_os(v).filter(|s| !s.is_empty());
        if let Some(dir) = non_empty(CACHE_ENV) {
            return Ok(PathBuf::from(dir));
        }
        if let Some(dir) = non_empty("XDG_CACHE_HOME") {
            return Ok(PathBuf::from(dir).join("pearvisor"));
        }
        if let Some(home) = non_empty("HOME") {
            return Ok(PathBuf::from(home).join(".cache").join("pearvisor"));
        }
        Err(CacheError::NoDirectory)
    }

    /// Opens (creating it) `dir`, or the default directory when `dir` is None.
    pub fn open(dir: Option<&Path>) -> Result<Cache, CacheError> {
        let root = match dir {
            Some(d) => d.to_path_buf(),
            None => Self::default_dir()?,
        };
        let cache = Cache { root };
        for sub in ["apt", "debs", "pkgs", "images", "tmp"] {
            cache.ensure_dir(&cache.root.join(sub))?;
        }
        cache.remove_stale_temp_files();
        Ok(cache)
    }

    /// Removes what crashed runs left in `<cache>/tmp/` more than a day ago.
    fn remove_stale_temp_files(&self) {
        let Ok(entries) = fs::read_dir(self.root.join("tmp")) else {
            return;
        };
        for entry in entries.flatten() {
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE_TEMP_AGE);
            if stale {
                let path = entry.path();
                let _ = fs::remove_file(&path).or_else(|_| fs::remove_dir_all(&path));
            }
        }
    }

    /// The cache's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<cache>/<sub>`.
    pub fn path(&self, sub: &str) -> PathBuf {
        self.root.join(sub)
    }

    /// Creates `dir` and its parents.
    pub fn ensure_dir(&self, dir: &Path) -> Result<(), CacheError> {
        fs::create_dir_all(dir).map_err(|source| CacheError::Io {
            path: dir.to_path_buf(),
            source,
        })
    }

    /// Takes the cache's exclusive lock, waiting for other holders.
    pub fn lock(&self) -> Result<CacheLock, CacheError> {
        let path = self.root.join("lock");
        let io_err = |source| CacheError::Io {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err)?;
        loop {
            // SAFETY: flock only operates on the descriptor, which `file` keeps open for the
            // duration of the call; no memory is passed.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(CacheLock { _file: file });
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(io_err(err));
            }
        }
    }

    /// A fresh, unused path under `<cache>/tmp/` starting with `prefix`.
    pub fn temp_path(&self, prefix: &str) -> PathBuf {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        self.root
            .join("tmp")
            .join(format!("{prefix}{}-{n}-{nanos:08x}", std::process::id()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_creates_layout_and_lock_is_reentrant_after_drop() {
        let dir = std::env::temp_dir().join(format!("pv-image-cache-{}", std::process::id()));
        let cache = Cache::open(Some(&dir)).unwrap();
        for sub in ["apt", "debs", "pkgs", "images", "tmp"] {
            assert!(dir.join(sub).is_dir(), "{sub}");
        }
        drop(cache.lock().unwrap());
        drop(cache.lock().unwrap());
        assert_ne!(cache.temp_path("x"), cache.temp_path("x"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
