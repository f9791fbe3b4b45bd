//! Running under a GPU runtime.
//!
//! A GPU runtime is a directory holding a newer C library, virglrenderer
//! and Mesa than the host has (built by `pearvisor gpu-runtime build`).
//! PearVisor re-executes itself through the runtime's dynamic loader and
//! marks the child with [`ACTIVE_ENV`]; inside, `libvirglrenderer.so.1`
//! resolves to the runtime's copy. virglrenderer would exec its render
//! server directly, which cannot work (the server needs the runtime's
//! loader too), so the server is started through the loader instead
//! ([`RuntimeLayout::server_launcher`]).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::renderer::ServerLauncher;

/// Set (to the runtime's root) in a process running under a GPU runtime.
pub const ACTIVE_ENV: &str = "PEARVISOR_GPU_RUNTIME_ACTIVE";
/// Where the runtime's libraries live, relative to its root.
pub const LIB_DIR: &str = "usr/lib/x86_64-linux-gnu";
/// The dynamic loader, relative to its root.
pub const LOADER: &str = "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2";
/// The render server, relative to its root.
pub const RENDER_SERVER: &str = "usr/libexec/virgl_render_server";

/// The files of a runtime rooted at `root`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeLayout {
    pub root: PathBuf,
}

impl RuntimeLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The runtime this process runs under, if any.
    pub fn active() -> Option<RuntimeLayout> {
        std::env::var_os(ACTIVE_ENV)
            .filter(|v| !v.is_empty())
            .map(RuntimeLayout::new)
    }

    pub fn loader(&self) -> PathBuf {
        self.root.join(LOADER)
    }

    pub fn lib_dir(&self) -> PathBuf {
        self.root.join(LIB_DIR)
    }

    pub fn render_server(&self) -> PathBuf {
        self.root.join(RENDER_SERVER)
    }

    /// The loader's arguments that run `program` with the runtime's
    /// libraries (`LOADER --inhibit-cache --library-path LIB[:extra] PROGRAM`).
    pub fn loader_args(&self, program: &Path) -> Vec<OsString> {
        let mut path = self.lib_dir().into_os_string();
        if let Some(extra) = std::env::var_os("PEARVISOR_GPU_RUNTIME_EXTRA_LIBS") {
            if !extra.is_empty() {
                path.push(":");
                path.push(extra);
            }
        }
        vec![
            "--inhibit-cache".into(),
            "--library-path".into(),
            path,
            program.into(),
        ]
    }

    /// The variables that point Vulkan, EGL and GBM into the runtime
    /// (lavapipe and llvmpipe); callers keep any the user set.
    pub fn default_env(&self) -> Vec<(String, OsString)> {
        let share = self.root.join("usr/share");
        let lib = self.lib_dir();
        vec![
            (
                "VK_DRIVER_FILES".into(),
                share.join("vulkan/icd.d/lvp_icd.json").into_os_string(),
            ),
            (
                "__EGL_VENDOR_LIBRARY_FILENAMES".into(),
                share
                    .join("glvnd/egl_vendor.d/50_mesa.json")
                    .into_os_string(),
            ),
            (
                "LIBGL_DRIVERS_PATH".into(),
                lib.join("dri").into_os_string(),
            ),
            ("GBM_BACKENDS_PATH".into(), lib.join("gbm").into_os_string()),
        ]
    }

    /// How to start the render server through the loader.
    pub fn server_launcher(&self) -> ServerLauncher {
        ServerLauncher {
            program: self.loader(),
            args: self.loader_args(&self.render_server()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_runs_through_the_runtime_loader() {
        let rt = RuntimeLayout::new("/opt/rt");
        let l = rt.server_launcher();
        assert_eq!(
            l.program,
            Path::new("/opt/rt/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
        );
        assert_eq!(l.args[0], "--inhibit-cache");
        assert_eq!(l.args[1], "--library-path");
        assert!(l.args[2]
            .to_string_lossy()
            .starts_with("/opt/rt/usr/lib/x86_64-linux-gnu"));
        assert_eq!(l.args[3], "/opt/rt/usr/libexec/virgl_render_server");
    }
}
