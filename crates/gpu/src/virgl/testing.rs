//! Running a test against the real virglrenderer: the test re-executes
//! its own binary under the GPU runtime's loader (the host's library may be
//! too old, as on Debian 12), the way `pearvisor` runs itself. For tests
//! only; it panics with what to do when no runtime is there.

use std::path::PathBuf;
use std::process::Command;

use super::runtime::{RuntimeLayout, ACTIVE_ENV};

const CHILD_ENV: &str = "PV_VIRGL_TEST_CHILD";

/// The runtime tests use: `PEARVISOR_GPU_RUNTIME`, else the cached one
/// (`pearvisor gpu-runtime build`; `scripts/test.sh` builds it).
pub fn runtime_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("PEARVISOR_GPU_RUNTIME") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .expect("HOME or XDG_CACHE_HOME must be set");
    let current = cache.join("pearvisor/gpu-runtime/current");
    assert!(
        current.exists(),
        "no GPU runtime at {}: run `pearvisor gpu-runtime build` (scripts/test.sh does)",
        current.display()
    );
    current
}

/// In the parent: runs test `path` (its full name) in a child under the
/// runtime, asserts it passed, and returns false. In the child (or with
/// `PV_VIRGL_DIRECT=1`, using the library the loader finds): returns true,
/// and the caller runs the test body.
pub fn in_gpu_runtime(path: &str) -> bool {
    if std::env::var_os(CHILD_ENV).is_some() || std::env::var_os("PV_VIRGL_DIRECT").is_some() {
        return true;
    }
    let rt = RuntimeLayout::new(runtime_root());
    let exe = std::env::current_exe().expect("test binary path");
    let mut cmd = Command::new(rt.loader());
    cmd.args(rt.loader_args(&exe))
        .args([path, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .env(ACTIVE_ENV, &rt.root);
    for (key, value) in rt.default_env() {
        if std::env::var_os(&key).is_none() {
            cmd.env(key, value);
        }
    }
    let out = cmd.output().expect("run the test under the GPU runtime");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{path} under the GPU runtime failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    false
}
