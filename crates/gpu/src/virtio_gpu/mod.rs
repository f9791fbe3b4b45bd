//! virtio-gpu: the guest's 2D screens (virtio 1.3 §5.7), layered as crosvm
//! does it.
//!
//! - [`protocol`]: the wire format: constants, [`GpuCommand::decode`] from
//!   the bytes the driver wrote, [`Response`] encoding.
//! - [`frontend`]: [`Frontend`], the worker's queue handler: chains in,
//!   commands executed, responses out, fences completed.
//! - [`scanout`]: [`Scanouts`] (what each display shows, frames and damage
//!   to the [`ScanoutSink`](pv_display::ScanoutSink), the cursor) and
//!   [`DisplayControl`] (modes, hot resize through the config event).
//! - [`backend`]: the [`GpuBackend`] trait the frontend drives; a 3D backend
//!   (virglrenderer) slots in beside [`resources::Backend2d`], the host
//!   memory implementation.
//! - [`edid`]: the EDID 1.4 block of each display.
//! - [`params`]: [`GpuParams`] (`--gpu width=1920,height=1080,...`).
//! - [`device`]: [`VirtioGpu`], the [`VirtioDevice`](pv_devices::virtio::VirtioDevice):
//!   features, config space, and the `virtio-gpu` worker thread.
//! - [`metrics`]: [`GpuMetrics`], counters readable while the device runs.
//!
//! Two queues (controlq, cursorq) of 256 entries; features VERSION_1,
//! RING_EVENT_IDX, RING_INDIRECT_DESC and VIRTIO_GPU_F_EDID. Every number
//! the guest writes is checked: hostile requests get error responses, never
//! a panic or an allocation beyond `max_hostmem`.

pub mod backend;
pub mod device;
pub mod edid;
pub mod frontend;
pub mod manual3d;
pub mod metrics;
pub mod params;
pub mod protocol;
pub mod resources;
pub mod scanout;
pub mod virgl_backend;

#[cfg(test)]
mod adversarial;
#[cfg(test)]
mod tests;

pub use backend::{
    BackendError, BackendUsage, BlobRequest, Gpu3d, GpuBackend, HostVisibleWindow, ResourceInfo,
    ResourceView, Usage3d,
};
pub use device::{GpuDeviceError, VirtioGpu, QUEUE_SIZE, THREAD_NAME};
pub use frontend::{CommandError, Frontend};
pub use metrics::{GpuMetrics, GpuMetricsSnapshot};
pub use params::{GpuParams, ParamsError};
pub use protocol::{GpuCommand, Response};
pub use resources::Backend2d;
pub use scanout::{DisplayControl, ResizeError, ScanoutError, Scanouts};
pub use virgl_backend::VirglBackend;
