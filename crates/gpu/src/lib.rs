//! pv-gpu: the virtio-gpu device ([`virtio_gpu`]: 2D resources, scanouts and cursor pushed
//! to a `pv_display::ScanoutSink`) and the host GPU inventory — every GPU the Vulkan loader
//! sees, what PearVisor's 3D path (Venus through virglrenderer) needs from it, and live NVML
//! figures on NVIDIA.
//!
//! Nothing is linked at build time: the Vulkan loader (`libvulkan.so.1`) and NVML
//! (`libnvidia-ml.so.1`) are opened at run time, so the binary runs on hosts without either.
//! The loader honours its usual variables (`VK_DRIVER_FILES`, `VK_LOADER_DEBUG`, …).
//!
//! ```no_run
//! let inv = pv_gpu::inventory()?;
//! print!("{}", pv_gpu::render_text(&inv));
//! for gpu in &inv.gpus {
//!     println!("{}: {}", gpu.name, gpu.verdict);
//! }
//! # Ok::<(), pv_gpu::GpuError>(())
//! ```
//!
//! Modules: `virtio_gpu` (the device), `model` (the serde types, the Venus rule, version
//! decoding), `vulkan` (every `ash` call), `nvml` (NVML through libloading, pairing with
//! Vulkan devices), `render` (text output).

mod model;
mod nvml;
mod render;
pub mod virgl;
pub mod virtio_gpu;
mod vulkan;

pub use model::{
    decode_driver_version, format_api_version, vendor_name, venus_missing, verdict_for,
    Capabilities, DeviceType, GpuInfo, Inventory, NvmlMatch, NvmlStats, SyncFd, VENDOR_NVIDIA,
};
pub use render::render_text;

/// Why there is no inventory at all. A host with a loader but no device is not an error: it
/// gives an empty list with a note.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error(
        "no Vulkan loader (libvulkan.so.1) found: install libvulkan1 and a Vulkan driver \
         (mesa-vulkan-drivers for a CPU device)"
    )]
    NoLoader(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error(
        "the Vulkan loader (libvulkan.so.1) lacks vkGetInstanceProcAddr: reinstall libvulkan1"
    )]
    BrokenLoader(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the Vulkan loader could not report its version: reinstall libvulkan1")]
    LoaderVersion(#[source] VulkanError),
    #[error(
        "could not create a Vulkan instance: check the Vulkan driver installation \
         (VK_LOADER_DEBUG=error,warn shows what the loader tried)"
    )]
    Instance(#[source] VulkanError),
    #[error(
        "could not list the Vulkan devices: check the Vulkan driver installation \
         (VK_LOADER_DEBUG=error,warn shows what the loader tried)"
    )]
    EnumerateDevices(#[source] VulkanError),
}

/// A failed Vulkan call's `VkResult`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VulkanError(ash::vk::Result);

impl VulkanError {
    /// The raw `VkResult` (negative for errors).
    pub fn code(&self) -> i32 {
        self.0.as_raw()
    }
}

impl std::fmt::Display for VulkanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (VK_{:?})", self.0, self.0)
    }
}

impl std::error::Error for VulkanError {}

/// Takes the inventory: every Vulkan physical device with its properties, Venus capabilities
/// and verdict, plus NVML's utilization and memory figures for NVIDIA GPUs when
/// `libnvidia-ml.so.1` is present. Costs one Vulkan instance (and one NVML session): tens of
/// milliseconds on lavapipe, more on a hardware driver's first call.
pub fn inventory() -> Result<Inventory, GpuError> {
    let probe = vulkan::probe()?;
    let mut gpus = probe.gpus;
    let mut notes = probe.notes;
    let has_nvidia = gpus.iter().any(|g| g.vendor_id == VENDOR_NVIDIA);
    match nvml::query() {
        Ok(devices) => nvml::attach(&mut gpus, &probe.pci, devices, &mut notes),
        Err(nvml::NvmlError::Missing) if !has_nvidia => {}
        Err(e) => notes.push(format!("NVML: {e}: no utilization figures")),
    }
    Ok(Inventory {
        gpus,
        loader_version: probe.loader_version,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_say_what_to_do() {
        let e = GpuError::NoLoader("libvulkan.so.1: cannot open shared object file".into());
        assert_eq!(
            e.to_string(),
            "no Vulkan loader (libvulkan.so.1) found: install libvulkan1 and a Vulkan driver \
             (mesa-vulkan-drivers for a CPU device)"
        );
        let e = GpuError::Instance(VulkanError(ash::vk::Result::ERROR_INITIALIZATION_FAILED));
        let source = std::error::Error::source(&e).map(|s| s.to_string());
        assert_eq!(
            source.as_deref(),
            Some("Initialization of an object has failed (VK_ERROR_INITIALIZATION_FAILED)")
        );
        assert!(!e.to_string().contains("Initialization"));
    }
}
