//! The inventory against a real Vulkan driver: Mesa's lavapipe (a CPU device), which
//! `scripts/setup-host.sh` installs (libvulkan1, mesa-vulkan-drivers). Without the loader
//! this fails with the NoLoader message: it does not skip.

use pv_gpu::{inventory, render_text, DeviceType};

#[test]
fn lavapipe_is_listed_with_its_venus_capabilities() {
    let inv = match inventory() {
        Ok(inv) => inv,
        Err(e) => panic!("{e} (run scripts/setup-host.sh)"),
    };
    let text = render_text(&inv);
    let gpu = inv
        .gpus
        .iter()
        .find(|g| g.device_type == DeviceType::Cpu && g.name.contains("llvmpipe"))
        .unwrap_or_else(|| panic!("no llvmpipe CPU device in:\n{text}"));
    assert!(
        gpu.api_at_least(1, 1),
        "lavapipe's Vulkan is {}",
        gpu.api_version
    );
    let driver_name = gpu.driver_name.as_deref().unwrap_or_default();
    assert!(
        driver_name.contains("llvmpipe")
            || driver_name.contains("lavapipe")
            || gpu.driver_id.as_deref() == Some("MESA_LLVMPIPE"),
        "driver {driver_name:?} / {:?}",
        gpu.driver_id
    );
    assert!(gpu.device_local_memory > 0, "{text}");
    assert!(gpu.host_visible_memory > 0, "{text}");
    assert_eq!(gpu.vendor, "Mesa");
    assert!(inv.loader_version.is_some());
    assert!(gpu.nvml.is_none());
    // lavapipe has the fd extensions (bookworm's 22.3 and later).
    assert!(gpu.capabilities.external_memory_fd, "{text}");
    assert_eq!(gpu.verdict, gpu.verdict());
    assert!(
        gpu.verdict == "Venus-ready" || gpu.verdict.starts_with("not Venus-ready: missing "),
        "{}",
        gpu.verdict
    );
    assert_eq!(gpu.venus_ready, gpu.verdict == "Venus-ready");
    assert!(text.contains(&format!("GPU {}: {}", gpu.index, gpu.name)));
    assert!(text.contains(&format!(
        "verdict                           {}",
        gpu.verdict
    )));
}
