//! Before a 3D GPU is built: is virglrenderer usable here, and if not, is
//! there a GPU runtime to run under?
//!
//! `pearvisor run --gpu context-types=...` first tries the host's
//! `libvirglrenderer.so.1`. When it is missing, too old or built for a newer
//! C library, and a GPU runtime exists (`PEARVISOR_GPU_RUNTIME=DIR`, or the
//! one `pearvisor gpu-runtime build` cached), PearVisor executes itself
//! again through the runtime's dynamic loader, with the same arguments and
//! process id, and says so on stderr. Without a runtime it stops with what
//! it found and what to install. Inside the runtime
//! ([`pv_gpu::virgl::runtime::ACTIVE_ENV`] set) nothing is checked again.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use pv_gpu::virgl::runtime::{RuntimeLayout, ACTIVE_ENV};
use pv_gpu::virgl::{LibraryError, VirglLibrary};
use pv_vmm::config::VmConfig;

/// Where to find a runtime: the user's, else the cached one.
fn find_runtime() -> Option<(PathBuf, Option<String>)> {
    if let Some(dir) = std::env::var_os("PEARVISOR_GPU_RUNTIME").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        let version = pv_image::open_gpu_runtime(&dir)
            .and_then(|rt| rt.version_of("libvirglrenderer1").map(str::to_string));
        return Some((dir, version));
    }
    let rt = pv_image::cached_gpu_runtime(None)?;
    let version = rt.version_of("libvirglrenderer1").map(str::to_string);
    Some((rt.root, version))
}

/// Checks the host for what `config`'s GPU asks for; re-executes under the
/// GPU runtime when that is the way (and then does not return).
pub fn prepare(config: &VmConfig) -> Result<()> {
    let Some(gpu) = &config.gpu else {
        return Ok(());
    };
    if !gpu.context_types.any() || RuntimeLayout::active().is_some() {
        return Ok(());
    }
    let problem: LibraryError = match VirglLibrary::load() {
        Ok(lib) => {
            log::info!("using {}", lib.info());
            return Ok(());
        }
        Err(e) => e,
    };
    let Some((root, version)) = find_runtime() else {
        return Err(anyhow::Error::new(problem).context("GPU acceleration is unavailable"));
    };
    let rt = RuntimeLayout::new(&root);
    if !rt.loader().exists() {
        bail!(
            "the GPU runtime at {} has no dynamic loader ({}): rebuild it with `pearvisor gpu-runtime build`",
            root.display(),
            rt.loader().display()
        );
    }
    let exe = std::env::current_exe().context("cannot find the pearvisor executable")?;
    eprintln!(
        "pearvisor: {problem_short}; running under the GPU runtime at {} (virglrenderer {})",
        root.display(),
        version.as_deref().unwrap_or("of unknown version"),
        problem_short = short(&problem),
    );
    let mut cmd = Command::new(rt.loader());
    cmd.args(rt.loader_args(&exe))
        .args(std::env::args_os().skip(1))
        .env(ACTIVE_ENV, &root);
    for (key, value) in rt.default_env() {
        if std::env::var_os(&key).is_none() {
            cmd.env(key, value);
        }
    }
    let err = cmd.exec();
    Err(anyhow::Error::new(err).context(format!(
        "cannot run pearvisor under the GPU runtime's loader {}",
        rt.loader().display()
    )))
}

/// The host library's problem in a few words.
fn short(e: &LibraryError) -> String {
    match e {
        LibraryError::NotFound { .. } => "this host has no libvirglrenderer.so.1".into(),
        LibraryError::TooOld { found, .. } => {
            format!("this host's virglrenderer {found} is too old")
        }
        LibraryError::Unloadable { .. } => {
            "this host's libvirglrenderer.so.1 cannot be loaded".into()
        }
        LibraryError::MissingSymbol { symbol, .. } => {
            format!("this host's libvirglrenderer.so.1 lacks {symbol}")
        }
    }
}
