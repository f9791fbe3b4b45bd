//! The seam between the frontend and whatever holds the guest's resources.
//!
//! [`GpuBackend`] is the set of resource operations the frontend needs: the
//! 2D backend ([`Backend2d`](super::resources::Backend2d)) keeps resources
//! as host memory and copies pixels from the guest's backing pages; a 3D
//! backend (virglrenderer) implements the same calls on GPU resources, with
//! [`GpuBackend::view`] reading a resource back for the display sinks, and
//! adds its own commands beside them. Scanouts, the cursor, fences and the
//! queues stay in the frontend.

use pv_devices::GuestMemory;
use pv_display::{PixelFormat, Rect};

use super::protocol::{
    MemEntry, RESP_ERR_INVALID_PARAMETER, RESP_ERR_INVALID_RESOURCE_ID, RESP_ERR_OUT_OF_MEMORY,
    RESP_ERR_UNSPEC,
};

/// Why a resource operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("resource id 0 is reserved")]
    ZeroResourceId,
    #[error("unknown resource {0}")]
    UnknownResource(u32),
    #[error("resource {0} already exists")]
    ResourceExists(u32),
    #[error("unknown format {0}")]
    BadFormat(u32),
    #[error("resource size {width}x{height} is empty or too large")]
    BadSize { width: u32, height: u32 },
    #[error("{need} more bytes would exceed the {max}-byte host memory cap ({used} in use)")]
    OutOfMemory { need: u64, used: u64, max: u64 },
    #[error("too many resources (limit {0})")]
    TooManyResources(usize),
    #[error("host allocation of {0} bytes failed")]
    Alloc(u64),
    #[error("resource {0} has no backing")]
    NoBacking(u32),
    #[error("resource {0} already has backing")]
    BackingAttached(u32),
    #[error("backing without entries")]
    NoEntries,
    #[error("backing entry {addr:#x}+{len:#x} is outside guest memory")]
    BadBacking { addr: u64, len: u32 },
    #[error("rectangle {rect:?} is outside the {width}x{height} resource")]
    OutsideResource { rect: Rect, width: u32, height: u32 },
    #[error("transfer reads {end} bytes of backing, resource has {len}")]
    OutsideBacking { end: u64, len: u64 },
    #[error("guest memory access failed")]
    Memory(#[source] vm_memory::GuestMemoryError),
}

impl BackendError {
    /// The response type the driver gets for this error.
    pub fn response_type(&self) -> u32 {
        match self {
            Self::ZeroResourceId | Self::UnknownResource(_) | Self::ResourceExists(_) => {
                RESP_ERR_INVALID_RESOURCE_ID
            }
            Self::OutOfMemory { .. } | Self::TooManyResources(_) | Self::Alloc(_) => {
                RESP_ERR_OUT_OF_MEMORY
            }
            Self::BadFormat(_)
            | Self::BadSize { .. }
            | Self::NoEntries
            | Self::BadBacking { .. }
            | Self::OutsideResource { .. }
            | Self::OutsideBacking { .. } => RESP_ERR_INVALID_PARAMETER,
            Self::NoBacking(_) | Self::BackingAttached(_) | Self::Memory(_) => RESP_ERR_UNSPEC,
        }
    }
}

/// A resource's size and layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceInfo {
    pub width: u32,
    pub height: u32,
    pub format: PixelFormat,
}

/// A resource's pixels on the host: `height` rows of `stride` bytes.
#[derive(Debug, Clone, Copy)]
pub struct ResourceView<'a> {
    pub info: ResourceInfo,
    pub stride: u32,
    pub data: &'a [u8],
}

/// What the backend holds, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackendUsage {
    /// Live resources.
    pub resources: u64,
    /// Host bytes they hold (pixels and backing tables).
    pub host_bytes: u64,
}

/// Resource operations (virtio 1.3 §5.7.6.8). Every argument comes from the
/// guest: implementations check ids, sizes, rectangles and addresses, and
/// answer with a [`BackendError`] rather than panicking or allocating
/// without bound.
pub trait GpuBackend: Send {
    /// RESOURCE_CREATE_2D.
    fn create_2d(
        &mut self,
        resource_id: u32,
        format: u32,
        width: u32,
        height: u32,
    ) -> Result<(), BackendError>;
    /// RESOURCE_UNREF (backing is detached with it).
    fn unref(&mut self, resource_id: u32) -> Result<(), BackendError>;
    /// RESOURCE_ATTACH_BACKING: the guest pages behind a resource.
    fn attach_backing(
        &mut self,
        resource_id: u32,
        entries: Vec<MemEntry>,
        mem: &GuestMemory,
    ) -> Result<(), BackendError>;
    /// RESOURCE_DETACH_BACKING.
    fn detach_backing(&mut self, resource_id: u32) -> Result<(), BackendError>;
    /// TRANSFER_TO_HOST_2D: copies `rect` of the resource from its backing,
    /// row `i` starting at byte `offset + i * stride` of the backing.
    /// Returns the bytes copied.
    fn transfer_to_host_2d(
        &mut self,
        resource_id: u32,
        rect: Rect,
        offset: u64,
        mem: &GuestMemory,
    ) -> Result<u64, BackendError>;
    /// A resource's size and format.
    fn info(&self, resource_id: u32) -> Result<ResourceInfo, BackendError>;
    /// A resource's pixels, for scanouts and the cursor.
    fn view(&mut self, resource_id: u32) -> Result<ResourceView<'_>, BackendError>;
    /// What the backend holds now.
    fn usage(&self) -> BackendUsage;
}
