//! A fence exported as a sync file (`VK_KHR_external_fence_fd`), the way
//! window systems wait for a client's rendering. Through Venus the export
//! is a virtio-gpu fence on the context's ring (`VIRTGPU_EXECBUF_RING_IDX`
//! with an out-fence), which the host signals from virglrenderer's fence
//! callback for that ring: the per-context timeline end to end.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{bail, Context, Result};
use ash::vk;

use crate::vk::{barrier, Gpu};

/// The device extension the export needs.
pub const EXTENSION: &std::ffi::CStr = ash::khr::external_fence_fd::NAME;

/// Whether this device can export fences as sync files.
pub fn supported(gpu: &Gpu) -> bool {
    let info = vk::PhysicalDeviceExternalFenceInfo::default()
        .handle_type(vk::ExternalFenceHandleTypeFlags::SYNC_FD);
    let mut props = vk::ExternalFenceProperties::default();
    // SAFETY: a physical device of this instance (Vulkan 1.1 core).
    unsafe {
        gpu.instance()
            .get_physical_device_external_fence_properties(gpu.physical(), &info, &mut props)
    };
    props
        .external_fence_features
        .contains(vk::ExternalFenceFeatureFlags::EXPORTABLE)
}

/// Fills a 16 MiB buffer, exports the submission's fence as a sync file,
/// waits for the file with poll(2) and checks the buffer: the sync file
/// must signal, and only after the work is done. A device that finished
/// before the export may return no file (-1, "already signalled").
pub fn check(gpu: &Gpu) -> Result<Option<String>> {
    let d = gpu.device();
    let bytes = 16u64 << 20;
    let mut out = gpu.buffer(bytes, vk::BufferUsageFlags::TRANSFER_DST, true)?;
    let mut export = vk::ExportFenceCreateInfo::default()
        .handle_types(vk::ExternalFenceHandleTypeFlags::SYNC_FD);
    // SAFETY: valid create info on a live device; destroyed below.
    let fence =
        unsafe { d.create_fence(&vk::FenceCreateInfo::default().push_next(&mut export), None) }
            .context("vkCreateFence (exportable as a sync file)")?;
    let result = (|| {
        gpu.record(|d, cmd| {
            // SAFETY: a command buffer in the recording state; the buffer
            // lives until the fence is waited for.
            unsafe { d.cmd_fill_buffer(cmd, out.buffer, 0, bytes, 0x5eed_f00d) };
            barrier(
                d,
                cmd,
                (
                    vk::PipelineStageFlags::TRANSFER,
                    vk::AccessFlags::TRANSFER_WRITE,
                ),
                (vk::PipelineStageFlags::HOST, vk::AccessFlags::HOST_READ),
            );
        })?;
        gpu.submit(fence)?;
        let fds = ash::khr::external_fence_fd::Device::new(gpu.instance(), d);
        let info = vk::FenceGetFdInfoKHR::default()
            .fence(fence)
            .handle_type(vk::ExternalFenceHandleTypeFlags::SYNC_FD);
        // SAFETY: a submitted fence created exportable as a sync file.
        let fd = unsafe { fds.get_fence_fd(&info) }.context("vkGetFenceFdKHR (sync file)")?;
        // -1: the work was already done (a fast device); no file to wait on.
        if fd < 0 {
            println!("PV-VK-SYNCFD-FILE=already-signalled");
        } else {
            // SAFETY: vkGetFenceFdKHR hands over a new file descriptor.
            let file = unsafe { OwnedFd::from_raw_fd(fd) };
            let mut pfd = libc::pollfd {
                fd: file.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, 30_000) };
            if n != 1 || pfd.revents & libc::POLLIN == 0 {
                bail!("the sync file did not signal within 30 s (poll returned {n})");
            }
            println!("PV-VK-SYNCFD-FILE=signalled");
        }
        // Exporting a sync file resets the fence's payload (copy
        // semantics); the sync file was the wait.
        out.invalidate()?;
        Ok(crate::vk::first_mismatch(out.words_mut()?, |_| 0x5eed_f00d))
    })();
    // SAFETY: the fence is no longer used by a pending submission: the
    // sync file signalled, or the queue is drained first.
    unsafe {
        let _ = d.device_wait_idle();
        d.destroy_fence(fence, None);
    }
    result
}
