//! NVIDIA's live figures through NVML (`libnvidia-ml.so.1`, opened at run time with
//! libloading), and the pairing of NVML devices with Vulkan devices.
//!
//! The library stays loaded for the life of the process once found; each query is one
//! `nvmlInit_v2` … `nvmlShutdown` session. Without the library there is simply no NVML data.

use std::ffi::{c_char, c_int, c_uint, c_ulonglong, c_void};
use std::sync::OnceLock;

use crate::model::{fixed_c_str, format_pci, GpuInfo, NvmlMatch, NvmlStats, VENDOR_NVIDIA};

/// Why NVML gave nothing.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NvmlError {
    #[error("libnvidia-ml.so.1 not found")]
    Missing,
    #[error("libnvidia-ml.so.1 lacks {0}")]
    Symbol(&'static str),
    #[error("{call} returned NVML error {code}")]
    Call { call: &'static str, code: c_int },
}

/// One GPU as NVML sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct NvmlDevice {
    pub name: String,
    /// domain, bus, device, function.
    pub pci: Option<[u32; 4]>,
    pub gpu_util: Option<u32>,
    pub mem_util: Option<u32>,
    pub memory_used: Option<u64>,
    pub memory_total: Option<u64>,
}

type Device = *mut c_void;

/// `nvmlUtilization_t`.
#[repr(C)]
#[derive(Default)]
struct Utilization {
    gpu: c_uint,
    memory: c_uint,
}

/// `nvmlMemory_t` (v1).
#[repr(C)]
#[derive(Default)]
struct Memory {
    total: c_ulonglong,
    free: c_ulonglong,
    used: c_ulonglong,
}

/// `nvmlMemory_v2_t`: `used` leaves out the driver's reserved memory, as nvidia-smi shows.
#[repr(C)]
#[derive(Default)]
struct MemoryV2 {
    version: c_uint,
    total: c_ulonglong,
    reserved: c_ulonglong,
    free: c_ulonglong,
    used: c_ulonglong,
}

/// `nvmlMemory_v2`: NVML_STRUCT_VERSION(Memory, 2).
const MEMORY_V2_VERSION: c_uint = std::mem::size_of::<MemoryV2>() as c_uint | (2 << 24);

/// `nvmlPciInfo_t` as `nvmlDeviceGetPciInfo_v3` fills it.
#[repr(C)]
#[derive(Default)]
struct PciInfo {
    bus_id_legacy: [c_char; 16],
    domain: c_uint,
    bus: c_uint,
    device: c_uint,
    pci_device_id: c_uint,
    pci_sub_system_id: c_uint,
    bus_id: [c_char; 32],
}

/// NVML_DEVICE_NAME_V2_BUFFER_SIZE.
const NAME_LEN: usize = 96;

struct Api {
    init: unsafe extern "C" fn() -> c_int,
    shutdown: unsafe extern "C" fn() -> c_int,
    count: unsafe extern "C" fn(*mut c_uint) -> c_int,
    handle: unsafe extern "C" fn(c_uint, *mut Device) -> c_int,
    name: unsafe extern "C" fn(Device, *mut c_char, c_uint) -> c_int,
    utilization: unsafe extern "C" fn(Device, *mut Utilization) -> c_int,
    memory: unsafe extern "C" fn(Device, *mut Memory) -> c_int,
    /// Newer drivers only (about 510 on).
    memory_v2: Option<unsafe extern "C" fn(Device, *mut MemoryV2) -> c_int>,
    pci: unsafe extern "C" fn(Device, *mut PciInfo) -> c_int,
}

/// Opens the library once per process and resolves the entry points.
fn api() -> Result<&'static Api, NvmlError> {
    static LIB: OnceLock<libloading::Library> = OnceLock::new();
    static API: OnceLock<Api> = OnceLock::new();
    if let Some(api) = API.get() {
        return Ok(api);
    }
    let lib = match LIB.get() {
        Some(lib) => lib,
        None => {
            // SAFETY: dlopen of NVIDIA's NVML library, whose initializers only set up the
            // library; it is kept in a static and never unloaded.
            let lib = unsafe { libloading::Library::new("libnvidia-ml.so.1") }
                .map_err(|_| NvmlError::Missing)?;
            LIB.get_or_init(|| lib)
        }
    };
    macro_rules! sym {
        ($name:literal) => {
            // SAFETY: the function type matches the declaration in NVIDIA's nvml.h, and the
            // library stays loaded (static) so the copied pointer never dangles.
            *unsafe { lib.get(concat!($name, "\0").as_bytes()) }
                .map_err(|_| NvmlError::Symbol($name))?
        };
    }
    let api = Api {
        init: sym!("nvmlInit_v2"),
        shutdown: sym!("nvmlShutdown"),
        count: sym!("nvmlDeviceGetCount_v2"),
        handle: sym!("nvmlDeviceGetHandleByIndex_v2"),
        name: sym!("nvmlDeviceGetName"),
        utilization: sym!("nvmlDeviceGetUtilizationRates"),
        memory: sym!("nvmlDeviceGetMemoryInfo"),
        pci: sym!("nvmlDeviceGetPciInfo_v3"),
        // SAFETY: as in `sym!`; a missing symbol just means an older driver.
        memory_v2: unsafe { lib.get(b"nvmlDeviceGetMemoryInfo_v2\0") }
            .ok()
            .map(|f| *f),
    };
    Ok(API.get_or_init(|| api))
}

fn check(call: &'static str, code: c_int) -> Result<(), NvmlError> {
    if code == 0 {
        Ok(())
    } else {
        Err(NvmlError::Call { call, code })
    }
}

/// Every GPU NVML knows, with its live figures (a figure NVML refuses is left out).
pub(crate) fn query() -> Result<Vec<NvmlDevice>, NvmlError> {
    let api = api()?;
    // SAFETY: nvmlInit_v2 takes no arguments and may be called from any thread.
    check("nvmlInit_v2", unsafe { (api.init)() })?;
    let devices = query_devices(api);
    // SAFETY: pairs with the successful nvmlInit_v2 above (NVML counts init/shutdown pairs).
    let _ = unsafe { (api.shutdown)() };
    devices
}

fn query_devices(api: &Api) -> Result<Vec<NvmlDevice>, NvmlError> {
    let mut count: c_uint = 0;
    // SAFETY: NVML is initialized; `count` is a valid out-pointer.
    check("nvmlDeviceGetCount_v2", unsafe { (api.count)(&mut count) })?;
    let mut out = Vec::new();
    for i in 0..count {
        let mut dev: Device = std::ptr::null_mut();
        // SAFETY: NVML is initialized, `i` < count, `dev` is a valid out-pointer.
        if unsafe { (api.handle)(i, &mut dev) } != 0 {
            out.push(NvmlDevice {
                name: format!("NVML device {i} (no handle)"),
                ..NvmlDevice::default()
            });
            continue;
        }
        let mut name = [0 as c_char; NAME_LEN];
        // SAFETY: `dev` is a handle NVML returned; the buffer holds NAME_LEN bytes.
        let name_ok = unsafe { (api.name)(dev, name.as_mut_ptr(), NAME_LEN as c_uint) } == 0;
        let mut util = Utilization::default();
        // SAFETY: valid handle and out-pointer to a struct of NVML's layout.
        let util_ok = unsafe { (api.utilization)(dev, &mut util) } == 0;
        let memory = memory_info(api, dev);
        let mut pci = PciInfo::default();
        // SAFETY: valid handle and out-pointer to a struct of NVML's layout.
        let pci_ok = unsafe { (api.pci)(dev, &mut pci) } == 0;
        out.push(NvmlDevice {
            name: if name_ok {
                fixed_c_str(&name)
            } else {
                format!("NVML device {i}")
            },
            pci: pci_ok.then(|| {
                let function = pci_function(&fixed_c_str(&pci.bus_id)).unwrap_or(0);
                [pci.domain, pci.bus, pci.device, function]
            }),
            gpu_util: util_ok.then_some(util.gpu),
            mem_util: util_ok.then_some(util.memory),
            memory_used: memory.map(|(used, _)| used),
            memory_total: memory.map(|(_, total)| total),
        });
    }
    Ok(out)
}

/// (used, total) bytes: v2 (used without reserved, as nvidia-smi) when the driver has it, else v1.
fn memory_info(api: &Api, dev: Device) -> Option<(u64, u64)> {
    if let Some(v2) = api.memory_v2 {
        let mut mem = MemoryV2 {
            version: MEMORY_V2_VERSION,
            ..MemoryV2::default()
        };
        // SAFETY: valid handle; out-pointer to a struct of nvmlMemory_v2_t's layout whose
        // version field says so.
        if unsafe { v2(dev, &mut mem) } == 0 {
            return Some((mem.used, mem.total));
        }
    }
    let mut mem = Memory::default();
    // SAFETY: valid handle and out-pointer to a struct of NVML's layout.
    (unsafe { (api.memory)(dev, &mut mem) } == 0).then_some((mem.used, mem.total))
}

/// The function number of an NVML bus id such as "00000000:1B:00.0".
fn pci_function(bus_id: &str) -> Option<u32> {
    let (_, f) = bus_id.rsplit_once('.')?;
    u32::from_str_radix(f.trim(), 16).ok()
}

/// Pairs NVML devices with NVIDIA Vulkan devices: by PCI domain/bus/device when both sides
/// know it, else by name, else by order. `pci[i]` belongs to `gpus[i]`. Unpaired NVML devices
/// become notes (a GPU without a Vulkan driver).
pub(crate) fn attach(
    gpus: &mut [GpuInfo],
    pci: &[Option<[u32; 4]>],
    devices: Vec<NvmlDevice>,
    notes: &mut Vec<String>,
) {
    let mut free: Vec<Option<NvmlDevice>> = devices.into_iter().map(Some).collect();
    let nvidia: Vec<usize> = (0..gpus.len())
        .filter(|&i| gpus[i].vendor_id == VENDOR_NVIDIA)
        .collect();
    let mut pending = Vec::new();
    // Pass 1: PCI addresses (function ignored: NVML reports whole devices).
    for &i in &nvidia {
        let found = pci.get(i).copied().flatten().and_then(|v| {
            free.iter().position(|d| {
                d.as_ref()
                    .and_then(|d| d.pci)
                    .is_some_and(|n| n[..3] == v[..3])
            })
        });
        match found.and_then(|pos| free[pos].take()) {
            Some(dev) => gpus[i].nvml = Some(stats(dev, NvmlMatch::PciBusId)),
            None => pending.push(i),
        }
    }
    // Pass 2: names, then order.
    for i in pending {
        let by_name = free
            .iter()
            .position(|d| d.as_ref().is_some_and(|d| d.name == gpus[i].name));
        let (pos, how) = match by_name {
            Some(pos) => (Some(pos), NvmlMatch::Name),
            None => (free.iter().position(Option::is_some), NvmlMatch::Order),
        };
        if let Some(dev) = pos.and_then(|pos| free[pos].take()) {
            gpus[i].nvml = Some(stats(dev, how));
        }
    }
    for dev in free.into_iter().flatten() {
        let at = dev
            .pci
            .map(|[d, b, dv, f]| format!(" at {}", format_pci(d, b, dv, f)))
            .unwrap_or_default();
        notes.push(format!(
            "NVML sees {}{at}, which Vulkan does not list: NVIDIA's Vulkan driver needs its \
             nvidia_icd.json (VK_DRIVER_FILES) and glvnd's libEGL.so.1 (libegl1)",
            dev.name
        ));
    }
}

fn stats(dev: NvmlDevice, matched_by: NvmlMatch) -> NvmlStats {
    NvmlStats {
        name: dev.name,
        pci_bus_id: dev.pci.map(|[d, b, dv, f]| format_pci(d, b, dv, f)),
        gpu_utilization_percent: dev.gpu_util,
        memory_utilization_percent: dev.mem_util,
        memory_used: dev.memory_used,
        memory_total: dev.memory_total,
        matched_by,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{verdict_for, Capabilities, DeviceType};

    fn gpu(name: &str, vendor_id: u32) -> GpuInfo {
        GpuInfo {
            index: 0,
            name: name.to_string(),
            vendor: String::new(),
            vendor_id,
            device_id: 0,
            device_type: DeviceType::Discrete,
            driver_name: None,
            driver_info: None,
            driver_id: None,
            driver_version: String::new(),
            driver_version_raw: 0,
            api_version: String::new(),
            api_version_raw: 0,
            pci_bus_id: None,
            device_local_memory: 0,
            host_visible_memory: 0,
            host_visible_device_local_memory: 0,
            ray_tracing: false,
            capabilities: Capabilities::default(),
            venus_ready: false,
            verdict: verdict_for(0, &Capabilities::default()),
            nvml: None,
        }
    }

    fn dev(name: &str, bus: u32) -> NvmlDevice {
        NvmlDevice {
            name: name.to_string(),
            pci: Some([0, bus, 0, 0]),
            gpu_util: Some(7),
            mem_util: Some(3),
            memory_used: Some(1 << 30),
            memory_total: Some(80 << 30),
        }
    }

    #[test]
    fn pairs_by_pci_then_name_then_order() {
        let mut gpus = vec![
            gpu("A", VENDOR_NVIDIA),
            gpu("llvmpipe", 0x10005),
            gpu("B", VENDOR_NVIDIA),
            gpu("C", VENDOR_NVIDIA),
        ];
        let pci = vec![Some([0, 0x3b, 0, 0]), None, None, None];
        let devices = vec![
            dev("C", 0x1b),
            dev("A", 0x3b),
            dev("X", 0x5d),
            dev("B", 0x2b),
            dev("Y", 0x6d),
        ];
        let mut notes = Vec::new();
        attach(&mut gpus, &pci, devices, &mut notes);
        let m = |i: usize| {
            gpus[i]
                .nvml
                .as_ref()
                .map(|s| (s.name.as_str(), s.matched_by))
        };
        assert_eq!(m(0), Some(("A", NvmlMatch::PciBusId)));
        assert_eq!(m(1), None);
        assert_eq!(m(2), Some(("B", NvmlMatch::Name)));
        assert_eq!(m(3), Some(("C", NvmlMatch::Name)));
        assert_eq!(notes.len(), 2);
        assert!(
            notes[0].starts_with("NVML sees X at 0000:5d:00.0"),
            "{notes:?}"
        );
    }

    #[test]
    fn falls_back_to_order_when_names_differ() {
        let mut gpus = vec![gpu("NVIDIA H100", VENDOR_NVIDIA)];
        let mut notes = Vec::new();
        attach(&mut gpus, &[None], vec![dev("H100 PCIe", 1)], &mut notes);
        let stats = gpus[0].nvml.as_ref().map(|s| s.matched_by);
        assert_eq!(stats, Some(NvmlMatch::Order));
        assert!(notes.is_empty());
    }

    #[test]
    fn bus_id_function() {
        assert_eq!(pci_function("00000000:1B:00.0"), Some(0));
        assert_eq!(pci_function("00000000:1B:00.3"), Some(3));
        assert_eq!(pci_function("garbage"), None);
    }

    #[test]
    fn struct_layouts_match_nvml_h() {
        assert_eq!(std::mem::size_of::<PciInfo>(), 16 + 5 * 4 + 32);
        assert_eq!(std::mem::size_of::<Memory>(), 24);
        assert_eq!(MEMORY_V2_VERSION, 0x0200_0028);
        assert_eq!(std::mem::size_of::<Utilization>(), 8);
    }
}
