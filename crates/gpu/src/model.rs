//! The inventory's data: one [`GpuInfo`] per Vulkan physical device, the Venus verdict, and
//! the pure helpers (vendor names, version decoding, fixed-size C strings) the probes share.
//!
//! Everything here is plain data with serde (snake_case JSON, sizes in bytes), so the CLI, the
//! REST API and the tests use one type.

use serde::{Deserialize, Serialize};

/// PCI vendor id of NVIDIA, whose driver version has its own encoding and whose GPUs NVML knows.
pub const VENDOR_NVIDIA: u32 = 0x10de;

/// What `inventory()` found on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// Every physical device, in the loader's order.
    pub gpus: Vec<GpuInfo>,
    /// The loader's instance version (`vkEnumerateInstanceVersion`), e.g. "1.3.239".
    pub loader_version: Option<String>,
    /// What a person should know: no driver found, NVML missing or unmatched, a failed query.
    pub notes: Vec<String>,
}

/// One Vulkan physical device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInfo {
    /// Position in `vkEnumeratePhysicalDevices`.
    pub index: u32,
    /// `deviceName`, e.g. "NVIDIA H100 80GB HBM3" or "llvmpipe (LLVM 15.0.6, 256 bits)".
    pub name: String,
    /// The vendor's name from `vendor_id` ("NVIDIA", "Mesa", … or "unknown").
    pub vendor: String,
    /// PCI vendor id (or a Khronos vendor id above 0xffff, e.g. 0x10005 for Mesa).
    pub vendor_id: u32,
    /// PCI device id (0 for CPU devices).
    pub device_id: u32,
    /// Discrete, integrated, virtual, CPU or other.
    pub device_type: DeviceType,
    /// `VkPhysicalDeviceDriverProperties::driverName` (Vulkan 1.2 or VK_KHR_driver_properties).
    pub driver_name: Option<String>,
    /// `VkPhysicalDeviceDriverProperties::driverInfo`, e.g. "Mesa 22.3.6 (LLVM 15.0.6)".
    pub driver_info: Option<String>,
    /// `VkDriverId` by name, e.g. "NVIDIA_PROPRIETARY", "MESA_LLVMPIPE".
    pub driver_id: Option<String>,
    /// `driverVersion` decoded for the vendor: see [`decode_driver_version`].
    pub driver_version: String,
    /// `driverVersion` as the driver reports it.
    pub driver_version_raw: u32,
    /// The device's Vulkan version, "major.minor.patch".
    pub api_version: String,
    /// The device's Vulkan version as a `VK_MAKE_API_VERSION` value.
    pub api_version_raw: u32,
    /// "dddd:bb:dd.f" from VK_EXT_pci_bus_info, when the driver offers it.
    pub pci_bus_id: Option<String>,
    /// Sum of the DEVICE_LOCAL memory heaps, bytes.
    pub device_local_memory: u64,
    /// Sum of the heaps that have a HOST_VISIBLE memory type, bytes (system memory the GPU
    /// can use, plus any device-local heap the CPU can map).
    pub host_visible_memory: u64,
    /// Sum of the DEVICE_LOCAL heaps that have a DEVICE_LOCAL + HOST_VISIBLE memory type:
    /// video memory the CPU can map directly (resizable BAR), bytes.
    pub host_visible_device_local_memory: u64,
    /// VK_KHR_ray_tracing_pipeline and VK_KHR_acceleration_structure.
    pub ray_tracing: bool,
    /// What PearVisor's 3D path (Venus through virglrenderer) uses.
    pub capabilities: Capabilities,
    /// Whether [`GpuInfo::verdict`] says "Venus-ready".
    pub venus_ready: bool,
    /// [`GpuInfo::verdict`] when the inventory was taken.
    pub verdict: String,
    /// Live figures from NVML (NVIDIA only; absent without `libnvidia-ml.so.1`).
    pub nvml: Option<NvmlStats>,
}

/// `VkPhysicalDeviceType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceType {
    Discrete,
    Integrated,
    Virtual,
    Cpu,
    Other,
}

impl DeviceType {
    /// The JSON spelling, for text output.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceType::Discrete => "discrete",
            DeviceType::Integrated => "integrated",
            DeviceType::Virtual => "virtual",
            DeviceType::Cpu => "cpu",
            DeviceType::Other => "other",
        }
    }
}

/// The extensions and handle types the Venus path cares about.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// VK_KHR_external_memory_fd: export/import memory as an fd (Venus blobs).
    pub external_memory_fd: bool,
    /// VK_EXT_external_memory_dma_buf: memory as a dma-buf (zero-copy scanout, other processes).
    pub external_memory_dma_buf: bool,
    /// VK_EXT_external_memory_host: import host pointers.
    pub external_memory_host: bool,
    /// VK_EXT_image_drm_format_modifier.
    pub image_drm_format_modifier: bool,
    /// VK_EXT_queue_family_foreign.
    pub queue_family_foreign: bool,
    /// VK_KHR_external_semaphore_fd.
    pub external_semaphore_fd: bool,
    /// VK_KHR_external_fence_fd.
    pub external_fence_fd: bool,
    /// SYNC_FD handles for (binary) semaphores.
    pub semaphore_sync_fd: SyncFd,
    /// SYNC_FD handles for fences.
    pub fence_sync_fd: SyncFd,
    /// Timeline semaphores (Vulkan 1.2 or VK_KHR_timeline_semaphore, feature enabled).
    pub timeline_semaphore: bool,
}

/// Whether a SYNC_FD handle can be imported and exported
/// (`vkGetPhysicalDeviceExternal{Semaphore,Fence}Properties`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncFd {
    pub import: bool,
    pub export: bool,
}

impl SyncFd {
    fn describe(self) -> &'static str {
        match (self.import, self.export) {
            (true, true) => "import+export",
            (true, false) => "import only",
            (false, true) => "export only",
            (false, false) => "no",
        }
    }
}

/// NVML's live view of an NVIDIA GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NvmlStats {
    /// `nvmlDeviceGetName`.
    pub name: String,
    /// NVML's PCI address, "dddd:bb:dd.f".
    pub pci_bus_id: Option<String>,
    /// Percent of the last sample period a kernel ran.
    pub gpu_utilization_percent: Option<u32>,
    /// Percent of the last sample period device memory was read or written.
    pub memory_utilization_percent: Option<u32>,
    /// Bytes of device memory in use.
    pub memory_used: Option<u64>,
    /// Bytes of device memory in all.
    pub memory_total: Option<u64>,
    /// How the Vulkan device and the NVML device were paired.
    pub matched_by: NvmlMatch,
}

/// How a Vulkan device was paired with an NVML device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NvmlMatch {
    /// Same PCI domain/bus/device (VK_EXT_pci_bus_info).
    PciBusId,
    /// Same name.
    Name,
    /// The n-th NVIDIA Vulkan device is NVML's n-th unpaired device.
    Order,
}

/// The PearVisor rule for the Venus path: the device's Vulkan is at least 1.1 and it has
/// VK_KHR_external_memory_fd, VK_KHR_external_semaphore_fd and VK_KHR_external_fence_fd.
/// Returns what is missing, in that order.
pub fn venus_missing(api_version_raw: u32, caps: &Capabilities) -> Vec<&'static str> {
    let mut missing = Vec::new();
    if !version_at_least(api_version_raw, 1, 1) {
        missing.push("Vulkan 1.1");
    }
    if !caps.external_memory_fd {
        missing.push("VK_KHR_external_memory_fd");
    }
    if !caps.external_semaphore_fd {
        missing.push("VK_KHR_external_semaphore_fd");
    }
    if !caps.external_fence_fd {
        missing.push("VK_KHR_external_fence_fd");
    }
    missing
}

/// "Venus-ready", or "not Venus-ready: missing X, Y".
pub fn verdict_for(api_version_raw: u32, caps: &Capabilities) -> String {
    let missing = venus_missing(api_version_raw, caps);
    if missing.is_empty() {
        "Venus-ready".to_string()
    } else {
        format!("not Venus-ready: missing {}", missing.join(", "))
    }
}

impl GpuInfo {
    /// The one-line Venus verdict, computed from the fields (see [`venus_missing`]).
    pub fn verdict(&self) -> String {
        verdict_for(self.api_version_raw, &self.capabilities)
    }

    /// Whether the device's Vulkan version is at least `major.minor`.
    pub fn api_at_least(&self, major: u32, minor: u32) -> bool {
        version_at_least(self.api_version_raw, major, minor)
    }

    /// One line per Venus capability: (name, value), in the order the docs list them.
    pub fn capability_lines(&self) -> Vec<(&'static str, String)> {
        let c = &self.capabilities;
        let yn = |b: bool| if b { "yes" } else { "no" }.to_string();
        vec![
            ("VK_KHR_external_memory_fd", yn(c.external_memory_fd)),
            (
                "VK_EXT_external_memory_dma_buf",
                yn(c.external_memory_dma_buf),
            ),
            ("VK_EXT_external_memory_host", yn(c.external_memory_host)),
            (
                "VK_EXT_image_drm_format_modifier",
                yn(c.image_drm_format_modifier),
            ),
            ("VK_EXT_queue_family_foreign", yn(c.queue_family_foreign)),
            ("VK_KHR_external_semaphore_fd", yn(c.external_semaphore_fd)),
            ("VK_KHR_external_fence_fd", yn(c.external_fence_fd)),
            (
                "semaphore SYNC_FD",
                c.semaphore_sync_fd.describe().to_string(),
            ),
            ("fence SYNC_FD", c.fence_sync_fd.describe().to_string()),
            ("timeline semaphores", yn(c.timeline_semaphore)),
        ]
    }
}

/// `VK_API_VERSION_MAJOR` and friends (the variant in the top 3 bits is ignored).
pub fn api_version_parts(v: u32) -> (u32, u32, u32) {
    ((v >> 22) & 0x7f, (v >> 12) & 0x3ff, v & 0xfff)
}

/// "major.minor.patch" of a `VK_MAKE_API_VERSION` value.
pub fn format_api_version(v: u32) -> String {
    let (major, minor, patch) = api_version_parts(v);
    format!("{major}.{minor}.{patch}")
}

fn version_at_least(v: u32, major: u32, minor: u32) -> bool {
    let (ma, mi, _) = api_version_parts(v);
    (ma, mi) >= (major, minor)
}

/// Decodes `VkPhysicalDeviceProperties::driverVersion` the way the vendor packs it.
///
/// NVIDIA: 10.8.8.6 bits (major.minor.secondary.tertiary), printed like `nvidia-smi`:
/// "580.159", "535.104.05". Everyone else (Mesa, AMD's and Intel's Linux drivers): the
/// Vulkan `VK_MAKE_VERSION` layout, 10.10.12 bits, printed "major.minor.patch".
pub fn decode_driver_version(vendor_id: u32, raw: u32) -> String {
    if vendor_id == VENDOR_NVIDIA {
        let major = raw >> 22;
        let minor = (raw >> 14) & 0xff;
        let secondary = (raw >> 6) & 0xff;
        let tertiary = raw & 0x3f;
        let mut s = format!("{major}.{minor}");
        if secondary != 0 || tertiary != 0 {
            s.push_str(&format!(".{secondary:02}"));
        }
        if tertiary != 0 {
            s.push_str(&format!(".{tertiary}"));
        }
        s
    } else {
        format!("{}.{}.{}", raw >> 22, (raw >> 12) & 0x3ff, raw & 0xfff)
    }
}

/// The vendor behind a PCI (or Khronos) vendor id.
pub fn vendor_name(vendor_id: u32) -> &'static str {
    match vendor_id {
        VENDOR_NVIDIA => "NVIDIA",
        0x1002 | 0x1022 => "AMD",
        0x8086 => "Intel",
        0x13b5 => "ARM",
        0x5143 => "Qualcomm",
        0x1010 => "Imagination",
        0x106b => "Apple",
        0x14e4 => "Broadcom",
        0x1af4 => "Red Hat (virtio)",
        0x15ad => "VMware",
        0x1414 => "Microsoft",
        0x1ae0 => "Google",
        0x10001 => "Vivante",
        0x10002 => "VeriSilicon",
        0x10003 => "Kazan",
        0x10004 => "Codeplay",
        0x10005 => "Mesa",
        0x10006 => "PoCL",
        0x10007 => "Mobileye",
        _ => "unknown",
    }
}

/// A PCI address, as sysfs spells it: "0000:01:00.0".
pub fn format_pci(domain: u32, bus: u32, device: u32, function: u32) -> String {
    format!("{domain:04x}:{bus:02x}:{device:02x}.{function:x}")
}

/// A fixed-size, NUL-terminated C string from a driver, up to its first NUL (or the whole
/// array when there is none), with invalid UTF-8 replaced rather than trusted.
pub fn fixed_c_str(chars: &[std::ffi::c_char]) -> String {
    // `c_char` is i8 or u8 depending on the target: `as u8` keeps the byte either way.
    let bytes: Vec<u8> = chars
        .iter()
        .map(|&c| c as u8)
        .take_while(|&b| b != 0)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make_api(major: u32, minor: u32, patch: u32) -> u32 {
        (major << 22) | (minor << 12) | patch
    }

    fn all_caps() -> Capabilities {
        Capabilities {
            external_memory_fd: true,
            external_semaphore_fd: true,
            external_fence_fd: true,
            ..Capabilities::default()
        }
    }

    #[test]
    fn venus_ready_needs_1_1_and_the_three_fd_extensions() {
        assert_eq!(verdict_for(make_api(1, 1, 0), &all_caps()), "Venus-ready");
        assert_eq!(verdict_for(make_api(1, 4, 312), &all_caps()), "Venus-ready");
        assert_eq!(
            verdict_for(make_api(1, 0, 61), &all_caps()),
            "not Venus-ready: missing Vulkan 1.1"
        );
        let caps = Capabilities {
            external_memory_fd: false,
            external_fence_fd: false,
            ..all_caps()
        };
        assert_eq!(
            verdict_for(make_api(1, 3, 0), &caps),
            "not Venus-ready: missing VK_KHR_external_memory_fd, VK_KHR_external_fence_fd"
        );
        assert_eq!(
            verdict_for(make_api(1, 0, 0), &Capabilities::default()),
            "not Venus-ready: missing Vulkan 1.1, VK_KHR_external_memory_fd, \
             VK_KHR_external_semaphore_fd, VK_KHR_external_fence_fd"
        );
    }

    #[test]
    fn dma_buf_and_sync_fd_do_not_decide_the_verdict() {
        // NVIDIA has neither dma-buf nor SYNC_FD and still runs Venus (LAB.md §5).
        let caps = Capabilities {
            external_memory_dma_buf: false,
            semaphore_sync_fd: SyncFd::default(),
            ..all_caps()
        };
        assert!(venus_missing(make_api(1, 4, 0), &caps).is_empty());
    }

    #[test]
    fn nvidia_driver_version_uses_10_8_8_6_bits() {
        // 580.159: (580 << 22) | (159 << 14).
        assert_eq!(
            decode_driver_version(VENDOR_NVIDIA, 2_435_301_376),
            "580.159"
        );
        // 580.159.04, as the H100's driver reports it (raw 0x9127c100).
        assert_eq!(
            decode_driver_version(VENDOR_NVIDIA, 0x9127_c100),
            "580.159.04"
        );
        let v535 = (535 << 22) | (104 << 14) | (5 << 6);
        assert_eq!(decode_driver_version(VENDOR_NVIDIA, v535), "535.104.05");
        let tertiary = (470 << 22) | (57 << 14) | (2 << 6) | 1;
        assert_eq!(
            decode_driver_version(VENDOR_NVIDIA, tertiary),
            "470.57.02.1"
        );
    }

    #[test]
    fn other_driver_versions_use_vulkan_major_minor_patch() {
        // Mesa 22.3.6 (lavapipe on bookworm) and 25.0.7.
        assert_eq!(decode_driver_version(0x10005, make_api(22, 3, 6)), "22.3.6");
        assert_eq!(decode_driver_version(0x1002, make_api(25, 0, 7)), "25.0.7");
        // The same bits read as NVIDIA's layout would be wrong: vendor decides.
        assert_ne!(
            decode_driver_version(VENDOR_NVIDIA, make_api(22, 3, 6)),
            "22.3.6"
        );
    }

    #[test]
    fn api_versions_ignore_the_variant() {
        let v = (1 << 29) | make_api(1, 3, 230);
        assert_eq!(format_api_version(v), "1.3.230");
        assert!(version_at_least(make_api(1, 1, 0), 1, 1));
        assert!(version_at_least(make_api(2, 0, 0), 1, 1));
        assert!(!version_at_least(make_api(1, 0, 300), 1, 1));
    }

    #[test]
    fn driver_strings_stop_at_nul_and_survive_bad_utf8() {
        let raw: Vec<std::ffi::c_char> = b"llvmpipe\0garbage"
            .iter()
            .map(|&b| b as std::ffi::c_char)
            .collect();
        assert_eq!(fixed_c_str(&raw), "llvmpipe");
        let bad: Vec<std::ffi::c_char> = [b'G', 0xff, b'U']
            .iter()
            .map(|&b| b as std::ffi::c_char)
            .collect();
        assert_eq!(fixed_c_str(&bad), "G\u{fffd}U");
        assert_eq!(fixed_c_str(&[]), "");
    }

    #[test]
    fn vendors_and_pci_addresses() {
        assert_eq!(vendor_name(0x10de), "NVIDIA");
        assert_eq!(vendor_name(0x10005), "Mesa");
        assert_eq!(vendor_name(0xabcd), "unknown");
        assert_eq!(format_pci(0, 0x1b, 0, 0), "0000:1b:00.0");
    }
}
