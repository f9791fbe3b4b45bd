//! The human-readable inventory: one block per GPU, aligned `key  value` lines, notes last.

use std::fmt::Write as _;

use crate::model::{GpuInfo, Inventory};

/// Width of the key column.
const KEY: usize = 34;

/// The inventory as text for a terminal (what `pearvisor gpu` prints).
pub fn render_text(inv: &Inventory) -> String {
    let mut out = String::new();
    let loader = inv.loader_version.as_deref().unwrap_or("unknown");
    let n = inv.gpus.len();
    let _ = writeln!(
        out,
        "Vulkan loader {loader}: {n} GPU{}",
        if n == 1 { "" } else { "s" }
    );
    for gpu in &inv.gpus {
        out.push('\n');
        render_gpu(&mut out, gpu);
    }
    if !inv.notes.is_empty() {
        out.push_str("\nnotes:\n");
        for note in &inv.notes {
            let _ = writeln!(out, "  - {note}");
        }
    }
    out
}

fn line(out: &mut String, key: &str, value: &str) {
    let _ = writeln!(out, "  {key:<KEY$}{value}");
}

fn render_gpu(out: &mut String, g: &GpuInfo) {
    let _ = writeln!(out, "GPU {}: {}", g.index, g.name);
    line(out, "type", g.device_type.as_str());
    line(
        out,
        "vendor",
        &format!(
            "{} (0x{:04x}), device 0x{:04x}",
            g.vendor, g.vendor_id, g.device_id
        ),
    );
    let driver = match (&g.driver_name, &g.driver_info) {
        (Some(name), Some(info)) if !info.is_empty() => format!("{name} ({info})"),
        (Some(name), _) => name.clone(),
        (None, _) => "(driver properties not reported)".to_string(),
    };
    line(out, "driver", &driver);
    let id = g
        .driver_id
        .as_deref()
        .map(|id| format!(", id {id}"))
        .unwrap_or_default();
    line(
        out,
        "driver version",
        &format!(
            "{} (raw 0x{:08x}){id}",
            g.driver_version, g.driver_version_raw
        ),
    );
    line(out, "Vulkan", &g.api_version);
    line(out, "PCI", g.pci_bus_id.as_deref().unwrap_or("-"));
    line(out, "device-local memory", &bytes(g.device_local_memory));
    line(out, "host-visible memory", &bytes(g.host_visible_memory));
    line(
        out,
        "host-visible device-local memory",
        &bytes(g.host_visible_device_local_memory),
    );
    line(out, "ray tracing", if g.ray_tracing { "yes" } else { "no" });
    for (key, value) in g.capability_lines() {
        line(out, key, &value);
    }
    if let Some(s) = &g.nvml {
        let pct = |p: Option<u32>| p.map_or("?".to_string(), |p| format!("{p} %"));
        line(
            out,
            "utilization (NVML)",
            &format!(
                "GPU {}, memory {}",
                pct(s.gpu_utilization_percent),
                pct(s.memory_utilization_percent)
            ),
        );
        let used = match (s.memory_used, s.memory_total) {
            (Some(used), Some(total)) => format!("{} of {}", bytes(used), bytes(total)),
            _ => "?".to_string(),
        };
        line(out, "memory used (NVML)", &used);
    }
    line(out, "verdict", &g.verdict);
}

/// "80.0 GiB (85899345920 bytes)".
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {} ({n} bytes)", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        verdict_for, Capabilities, DeviceType, NvmlMatch, NvmlStats, SyncFd, VENDOR_NVIDIA,
    };

    fn h100() -> GpuInfo {
        let capabilities = Capabilities {
            external_memory_fd: true,
            external_memory_host: true,
            image_drm_format_modifier: true,
            queue_family_foreign: true,
            external_semaphore_fd: true,
            external_fence_fd: true,
            timeline_semaphore: true,
            fence_sync_fd: SyncFd {
                import: true,
                export: false,
            },
            ..Capabilities::default()
        };
        let api = (1 << 22) | (4 << 12) | 312;
        GpuInfo {
            index: 0,
            name: "NVIDIA H100 80GB HBM3".into(),
            vendor: "NVIDIA".into(),
            vendor_id: VENDOR_NVIDIA,
            device_id: 0x2330,
            device_type: DeviceType::Discrete,
            driver_name: Some("NVIDIA".into()),
            driver_info: Some("580.159".into()),
            driver_id: Some("NVIDIA_PROPRIETARY".into()),
            driver_version: "580.159".into(),
            driver_version_raw: 2_435_301_376,
            api_version: "1.4.312".into(),
            api_version_raw: api,
            pci_bus_id: Some("0000:1b:00.0".into()),
            device_local_memory: 80 << 30,
            host_visible_memory: 174 << 30,
            host_visible_device_local_memory: 80 << 30,
            ray_tracing: true,
            verdict: verdict_for(api, &capabilities),
            venus_ready: true,
            capabilities,
            nvml: Some(NvmlStats {
                name: "NVIDIA H100 80GB HBM3".into(),
                pci_bus_id: Some("0000:1b:00.0".into()),
                gpu_utilization_percent: Some(0),
                memory_utilization_percent: None,
                memory_used: Some(512 << 20),
                memory_total: Some(80 << 30),
                matched_by: NvmlMatch::PciBusId,
            }),
        }
    }

    #[test]
    fn renders_every_field_of_a_gpu() {
        let inv = Inventory {
            gpus: vec![h100()],
            loader_version: Some("1.3.239".into()),
            notes: vec!["a note".into()],
        };
        let text = render_text(&inv);
        for want in [
            "Vulkan loader 1.3.239: 1 GPU\n",
            "GPU 0: NVIDIA H100 80GB HBM3\n",
            "  type                              discrete\n",
            "NVIDIA (0x10de), device 0x2330",
            "NVIDIA (580.159)",
            "580.159 (raw 0x9127c000), id NVIDIA_PROPRIETARY",
            "1.4.312",
            "0000:1b:00.0",
            "80.0 GiB (85899345920 bytes)",
            "host-visible memory               174.0 GiB",
            "host-visible device-local memory  80.0 GiB",
            "VK_EXT_external_memory_dma_buf    no\n",
            "VK_KHR_external_memory_fd         yes\n",
            "fence SYNC_FD                     import only\n",
            "utilization (NVML)                GPU 0 %, memory ?\n",
            "512.0 MiB (536870912 bytes) of 80.0 GiB",
            "verdict                           Venus-ready\n",
            "\nnotes:\n  - a note\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }

    #[test]
    fn renders_an_empty_inventory() {
        let inv = Inventory {
            gpus: vec![],
            loader_version: None,
            notes: vec![],
        };
        assert_eq!(render_text(&inv), "Vulkan loader unknown: 0 GPUs\n");
    }

    #[test]
    fn json_round_trips_in_snake_case() {
        let inv = Inventory {
            gpus: vec![h100()],
            loader_version: Some("1.3.239".into()),
            notes: vec!["n".into()],
        };
        let json = serde_json::to_string_pretty(&inv).unwrap();
        for key in [
            "\"device_type\": \"discrete\"",
            "\"device_local_memory\": 85899345920",
            "\"external_memory_dma_buf\": false",
            "\"semaphore_sync_fd\": {",
            "\"matched_by\": \"pci_bus_id\"",
            "\"verdict\": \"Venus-ready\"",
        ] {
            assert!(json.contains(key), "missing {key} in {json}");
        }
        let back: Inventory = serde_json::from_str(&json).unwrap();
        assert_eq!(back, inv);
        assert_eq!(back.gpus[0].verdict(), back.gpus[0].verdict);
    }

    #[test]
    fn sizes() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1536), "1.5 KiB (1536 bytes)");
    }
}
