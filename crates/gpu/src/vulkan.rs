//! The Vulkan probe: every `ash` call of the crate (they are all `unsafe`) lives here.
//!
//! The loader (`libvulkan.so.1`) is opened at run time with `ash::Entry::load` and kept for
//! the life of the process, so no driver is ever unloaded under a thread it started (NVIDIA's
//! cleanup at unload is fragile). Each probe creates an instance at the loader's version (at
//! most 1.3, the version of ash's headers), reads every physical device's properties,
//! extensions, memory and external-handle support, and destroys the instance. No device,
//! surface or window is created.

use std::collections::HashSet;
use std::ffi::CStr;
use std::sync::OnceLock;

use ash::vk;

use crate::model::{
    decode_driver_version, fixed_c_str, format_api_version, format_pci, vendor_name, verdict_for,
    Capabilities, DeviceType, GpuInfo, SyncFd,
};
use crate::{GpuError, VulkanError};

/// What the Vulkan side of the inventory found.
pub(crate) struct Probe {
    pub loader_version: Option<String>,
    pub gpus: Vec<GpuInfo>,
    pub notes: Vec<String>,
    /// PCI domain/bus/device/function per entry of `gpus`, for pairing with NVML.
    pub pci: Vec<Option<[u32; 4]>>,
}

/// Opens the loader once per process.
fn entry() -> Result<&'static ash::Entry, GpuError> {
    static ENTRY: OnceLock<ash::Entry> = OnceLock::new();
    if let Some(entry) = ENTRY.get() {
        return Ok(entry);
    }
    // SAFETY: dlopen of the system's Vulkan loader runs its initializers, which is what
    // loading it is for; the Entry is stored in a static and never dropped, so every function
    // pointer taken from it stays valid for the life of the process.
    let loaded = unsafe { ash::Entry::load() }.map_err(|e| match e {
        ash::LoadingError::LibraryLoadFailure(e) => GpuError::NoLoader(Box::new(e)),
        ash::LoadingError::MissingEntryPoint(e) => GpuError::BrokenLoader(Box::new(e)),
    })?;
    Ok(ENTRY.get_or_init(|| loaded))
}

/// Destroys the instance however the probe ends.
struct InstanceGuard(ash::Instance);

impl Drop for InstanceGuard {
    fn drop(&mut self) {
        // SAFETY: the instance was created by `probe`, nothing created from it is alive (no
        // devices are ever created), and it is destroyed exactly once, here.
        unsafe { self.0.destroy_instance(None) };
    }
}

const API_1_1: u32 = vk::API_VERSION_1_1;
const API_1_2: u32 = vk::API_VERSION_1_2;

/// Vulkan versions compared without their patch (and variant) bits.
fn major_minor(v: u32) -> u32 {
    vk::make_api_version(0, vk::api_version_major(v), vk::api_version_minor(v), 0)
}

pub(crate) fn probe() -> Result<Probe, GpuError> {
    let entry = entry()?;
    // SAFETY: `entry` holds valid loader entry points; the call has no other precondition.
    let loader = unsafe { entry.try_enumerate_instance_version() }
        .map_err(|e| GpuError::LoaderVersion(VulkanError(e)))?;
    // None: a Vulkan 1.0 loader, which has no vkEnumerateInstanceVersion.
    let loader_api = loader.unwrap_or(vk::API_VERSION_1_0);
    let instance_api = major_minor(loader_api).min(vk::API_VERSION_1_3);
    let mut notes = Vec::new();
    let mut probe = Probe {
        loader_version: Some(format_api_version(loader_api)),
        gpus: Vec::new(),
        notes: Vec::new(),
        pci: Vec::new(),
    };
    if instance_api < API_1_1 {
        notes.push(
            "the Vulkan loader is 1.0: only basic properties can be read (install a newer libvulkan1)"
                .to_string(),
        );
    }

    // SAFETY: a null layer name asks for the loader's and implicit layers' extensions.
    let instance_exts = unsafe { entry.enumerate_instance_extension_properties(None) }
        .map(|v| names(&v.iter().map(|e| e.extension_name).collect::<Vec<_>>()))
        .unwrap_or_default();
    let mut enabled: Vec<*const std::ffi::c_char> = Vec::new();
    let mut flags = vk::InstanceCreateFlags::empty();
    let portability = ash::khr::portability_enumeration::NAME;
    if instance_exts.contains(portability.to_bytes()) {
        // MoltenVK and other portability drivers are only listed with this.
        enabled.push(portability.as_ptr());
        flags |= vk::InstanceCreateFlags::ENUMERATE_PORTABILITY_KHR;
    }
    let app = vk::ApplicationInfo::default()
        .application_name(c"pearvisor")
        .engine_name(c"pv-gpu")
        .api_version(instance_api);
    let create = vk::InstanceCreateInfo::default()
        .application_info(&app)
        .enabled_extension_names(&enabled)
        .flags(flags);
    // SAFETY: `create` and everything it points to (app info, extension names from 'static
    // CStrs) outlive the call; no allocation callbacks.
    let guard = match unsafe { entry.create_instance(&create, None) } {
        Ok(instance) => InstanceGuard(instance),
        Err(vk::Result::ERROR_INCOMPATIBLE_DRIVER) => {
            notes.push(NO_DRIVER_NOTE.to_string());
            probe.notes = notes;
            return Ok(probe);
        }
        Err(e) => return Err(GpuError::Instance(VulkanError(e))),
    };
    let instance = &guard.0;

    // SAFETY: `instance` is a live instance.
    let devices = unsafe { instance.enumerate_physical_devices() }
        .map_err(|e| GpuError::EnumerateDevices(VulkanError(e)))?;
    if devices.is_empty() {
        notes.push(NO_DRIVER_NOTE.to_string());
    }
    for (index, &pd) in devices.iter().enumerate() {
        let (gpu, pci) = describe(instance, pd, index as u32, instance_api, &mut notes);
        probe.gpus.push(gpu);
        probe.pci.push(pci);
    }
    probe.notes = notes;
    Ok(probe)
}

const NO_DRIVER_NOTE: &str = "the Vulkan loader found no device: install a Vulkan driver \
    (mesa-vulkan-drivers gives lavapipe, a CPU device) or point VK_DRIVER_FILES at a driver's \
    ICD json; VK_LOADER_DEBUG=error,warn shows what the loader tried";

/// Extension names as byte strings, for lookups by `CStr::to_bytes`.
fn names(raw: &[[std::ffi::c_char; vk::MAX_EXTENSION_NAME_SIZE]]) -> HashSet<Vec<u8>> {
    raw.iter().map(|n| fixed_c_str(n).into_bytes()).collect()
}

/// Everything about one physical device. Failures of optional queries become notes.
fn describe(
    instance: &ash::Instance,
    pd: vk::PhysicalDevice,
    index: u32,
    instance_api: u32,
    notes: &mut Vec<String>,
) -> (GpuInfo, Option<[u32; 4]>) {
    // SAFETY: `pd` came from enumerate_physical_devices on this live instance.
    let props = unsafe { instance.get_physical_device_properties(pd) };
    let name = fixed_c_str(&props.device_name);
    // Device-level functionality of a version needs both the device and the instance at it.
    let usable_api = major_minor(props.api_version).min(instance_api);

    // SAFETY: as above; a null layer name lists the driver's (and implicit layers') extensions.
    let exts = match unsafe { instance.enumerate_device_extension_properties(pd) } {
        Ok(v) => names(&v.iter().map(|e| e.extension_name).collect::<Vec<_>>()),
        Err(e) => {
            notes.push(format!(
                "GPU {index} ({name}): listing its extensions failed: {}",
                VulkanError(e)
            ));
            HashSet::new()
        }
    };
    let has = |ext: &CStr| exts.contains(ext.to_bytes());

    let mut driver = vk::PhysicalDeviceDriverProperties::default();
    let mut pci = vk::PhysicalDevicePCIBusInfoPropertiesEXT::default();
    let want_driver = usable_api >= API_1_2 || has(ash::khr::driver_properties::NAME);
    let want_pci = has(ash::ext::pci_bus_info::NAME);
    let props2_ok = usable_api >= API_1_1;
    if props2_ok && (want_driver || want_pci) {
        let mut p2 = vk::PhysicalDeviceProperties2::default();
        if want_driver {
            p2 = p2.push_next(&mut driver);
        }
        if want_pci {
            p2 = p2.push_next(&mut pci);
        }
        // SAFETY: Vulkan 1.1 is usable on this device and instance; the chain only holds
        // structures whose extension (or core version) the device has, all alive for the call.
        unsafe { instance.get_physical_device_properties2(pd, &mut p2) };
    }
    let has_driver = props2_ok && want_driver;
    let pci_addr = (props2_ok && want_pci).then_some([
        pci.pci_domain,
        pci.pci_bus,
        pci.pci_device,
        pci.pci_function,
    ]);

    let mut timeline = vk::PhysicalDeviceTimelineSemaphoreFeatures::default();
    let timeline_ok =
        props2_ok && (usable_api >= API_1_2 || has(ash::khr::timeline_semaphore::NAME));
    if timeline_ok {
        let mut f2 = vk::PhysicalDeviceFeatures2::default().push_next(&mut timeline);
        // SAFETY: Vulkan 1.1 is usable; the chained structure is core 1.2 or its extension is
        // present, and lives for the call.
        unsafe { instance.get_physical_device_features2(pd, &mut f2) };
    }

    let (semaphore_sync_fd, fence_sync_fd) = if props2_ok {
        sync_fd_support(instance, pd)
    } else {
        (SyncFd::default(), SyncFd::default())
    };

    // SAFETY: `pd` is a physical device of this live instance.
    let mem = unsafe { instance.get_physical_device_memory_properties(pd) };
    let (device_local_memory, host_visible_memory, host_visible_device_local_memory) =
        memory_sizes(&mem);

    let capabilities = Capabilities {
        external_memory_fd: has(ash::khr::external_memory_fd::NAME),
        external_memory_dma_buf: has(ash::ext::external_memory_dma_buf::NAME),
        external_memory_host: has(ash::ext::external_memory_host::NAME),
        image_drm_format_modifier: has(ash::ext::image_drm_format_modifier::NAME),
        queue_family_foreign: has(ash::ext::queue_family_foreign::NAME),
        external_semaphore_fd: has(ash::khr::external_semaphore_fd::NAME),
        external_fence_fd: has(ash::khr::external_fence_fd::NAME),
        semaphore_sync_fd,
        fence_sync_fd,
        timeline_semaphore: timeline_ok && timeline.timeline_semaphore == vk::TRUE,
    };
    let verdict = verdict_for(props.api_version, &capabilities);
    let gpu = GpuInfo {
        index,
        name,
        vendor: vendor_name(props.vendor_id).to_string(),
        vendor_id: props.vendor_id,
        device_id: props.device_id,
        device_type: match props.device_type {
            vk::PhysicalDeviceType::DISCRETE_GPU => DeviceType::Discrete,
            vk::PhysicalDeviceType::INTEGRATED_GPU => DeviceType::Integrated,
            vk::PhysicalDeviceType::VIRTUAL_GPU => DeviceType::Virtual,
            vk::PhysicalDeviceType::CPU => DeviceType::Cpu,
            _ => DeviceType::Other,
        },
        driver_name: has_driver.then(|| fixed_c_str(&driver.driver_name)),
        driver_info: has_driver.then(|| fixed_c_str(&driver.driver_info)),
        driver_id: has_driver.then(|| format!("{:?}", driver.driver_id)),
        driver_version: decode_driver_version(props.vendor_id, props.driver_version),
        driver_version_raw: props.driver_version,
        api_version: format_api_version(props.api_version),
        api_version_raw: props.api_version,
        pci_bus_id: pci_addr.map(|[d, b, dev, f]| format_pci(d, b, dev, f)),
        device_local_memory,
        host_visible_memory,
        host_visible_device_local_memory,
        ray_tracing: has(ash::khr::ray_tracing_pipeline::NAME)
            && has(ash::khr::acceleration_structure::NAME),
        venus_ready: verdict == "Venus-ready",
        verdict,
        capabilities,
        nvml: None,
    };
    (gpu, pci_addr)
}

/// SYNC_FD import/export for binary semaphores and for fences.
fn sync_fd_support(instance: &ash::Instance, pd: vk::PhysicalDevice) -> (SyncFd, SyncFd) {
    let sem_info = vk::PhysicalDeviceExternalSemaphoreInfo::default()
        .handle_type(vk::ExternalSemaphoreHandleTypeFlags::SYNC_FD);
    let mut sem = vk::ExternalSemaphoreProperties::default();
    // SAFETY: only called when Vulkan 1.1 (where this query is core) is usable on `pd`;
    // both structures live for the call.
    unsafe { instance.get_physical_device_external_semaphore_properties(pd, &sem_info, &mut sem) };
    let sem_features = sem.external_semaphore_features;

    let fence_info = vk::PhysicalDeviceExternalFenceInfo::default()
        .handle_type(vk::ExternalFenceHandleTypeFlags::SYNC_FD);
    let mut fence = vk::ExternalFenceProperties::default();
    // SAFETY: as above, for fences.
    unsafe { instance.get_physical_device_external_fence_properties(pd, &fence_info, &mut fence) };
    let fence_features = fence.external_fence_features;

    (
        SyncFd {
            import: sem_features.contains(vk::ExternalSemaphoreFeatureFlags::IMPORTABLE),
            export: sem_features.contains(vk::ExternalSemaphoreFeatureFlags::EXPORTABLE),
        },
        SyncFd {
            import: fence_features.contains(vk::ExternalFenceFeatureFlags::IMPORTABLE),
            export: fence_features.contains(vk::ExternalFenceFeatureFlags::EXPORTABLE),
        },
    )
}

/// (sum of DEVICE_LOCAL heaps, sum of heaps with a HOST_VISIBLE memory type, sum of
/// DEVICE_LOCAL heaps with a DEVICE_LOCAL + HOST_VISIBLE type), in bytes. Counts reported
/// beyond the arrays' bounds are clamped, not trusted.
fn memory_sizes(mem: &vk::PhysicalDeviceMemoryProperties) -> (u64, u64, u64) {
    let heaps = mem
        .memory_heaps
        .get(..mem.memory_heap_count as usize)
        .unwrap_or(&mem.memory_heaps[..]);
    let types = mem
        .memory_types
        .get(..mem.memory_type_count as usize)
        .unwrap_or(&mem.memory_types[..]);
    let has_type = |heap: usize, flags: vk::MemoryPropertyFlags| {
        types
            .iter()
            .any(|t| t.heap_index as usize == heap && t.property_flags.contains(flags))
    };
    let sum = |keep: &dyn Fn(usize, &vk::MemoryHeap) -> bool| {
        heaps
            .iter()
            .enumerate()
            .filter(|(i, h)| keep(*i, h))
            .fold(0u64, |total, (_, h)| total.saturating_add(h.size))
    };
    let local = |h: &vk::MemoryHeap| h.flags.contains(vk::MemoryHeapFlags::DEVICE_LOCAL);
    let mapped_local =
        vk::MemoryPropertyFlags::DEVICE_LOCAL | vk::MemoryPropertyFlags::HOST_VISIBLE;
    (
        sum(&|_, h| local(h)),
        sum(&|i, _| has_type(i, vk::MemoryPropertyFlags::HOST_VISIBLE)),
        sum(&|i, h| local(h) && has_type(i, mapped_local)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sums_device_local_and_host_visible_heaps() {
        let mut mem = vk::PhysicalDeviceMemoryProperties {
            memory_heap_count: 2,
            memory_type_count: 3,
            ..Default::default()
        };
        mem.memory_heaps[0] = vk::MemoryHeap {
            size: 80 << 30,
            flags: vk::MemoryHeapFlags::DEVICE_LOCAL,
        };
        mem.memory_heaps[1] = vk::MemoryHeap {
            size: 16 << 30,
            flags: vk::MemoryHeapFlags::empty(),
        };
        mem.memory_types[0] = vk::MemoryType {
            property_flags: vk::MemoryPropertyFlags::DEVICE_LOCAL,
            heap_index: 0,
        };
        mem.memory_types[1] = vk::MemoryType {
            property_flags: vk::MemoryPropertyFlags::HOST_VISIBLE
                | vk::MemoryPropertyFlags::HOST_COHERENT,
            heap_index: 1,
        };
        mem.memory_types[2] = vk::MemoryType {
            property_flags: vk::MemoryPropertyFlags::HOST_VISIBLE,
            heap_index: 1,
        };
        assert_eq!(memory_sizes(&mem), (80 << 30, 16 << 30, 0));
        // Resizable BAR: the video memory heap gets a mappable type too.
        mem.memory_type_count = 4;
        mem.memory_types[3] = vk::MemoryType {
            property_flags: vk::MemoryPropertyFlags::DEVICE_LOCAL
                | vk::MemoryPropertyFlags::HOST_VISIBLE,
            heap_index: 0,
        };
        assert_eq!(memory_sizes(&mem), (80 << 30, 96 << 30, 80 << 30));
    }

    #[test]
    fn memory_counts_beyond_the_arrays_are_clamped() {
        let mem = vk::PhysicalDeviceMemoryProperties {
            memory_heap_count: 1000,
            memory_type_count: 1000,
            ..Default::default()
        };
        assert_eq!(memory_sizes(&mem), (0, 0, 0));
    }

    #[test]
    fn versions_compare_without_patch() {
        assert_eq!(
            major_minor(vk::make_api_version(0, 1, 3, 239)),
            vk::API_VERSION_1_3
        );
        assert!(major_minor(vk::make_api_version(0, 1, 1, 0)) >= API_1_1);
    }
}
