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
    Create3d, MemEntry, ScanoutBlob, Transfer3d, RESP_ERR_INVALID_CONTEXT_ID,
    RESP_ERR_INVALID_PARAMETER, RESP_ERR_INVALID_RESOURCE_ID, RESP_ERR_OUT_OF_MEMORY,
    RESP_ERR_UNSPEC,
};
use crate::virgl::{CapsetInfo, FenceEvent, RendererError, Timeline};

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
    #[error("unknown context {0}")]
    UnknownContext(u32),
    #[error("context {0} already exists")]
    ContextExists(u32),
    #[error("too many contexts (limit {0})")]
    TooManyContexts(usize),
    #[error("capset {0} is not offered")]
    UnknownCapset(u32),
    #[error("resource {0} is not a blob that can be mapped")]
    NotMappable(u32),
    #[error("resource {0} is already mapped")]
    AlreadyMapped(u32),
    #[error("resource {0} is not mapped")]
    NotMapped(u32),
    #[error("blob of {size} bytes at offset {offset:#x} does not fit the {window}-byte host-visible window")]
    OutsideWindow { offset: u64, size: u64, window: u64 },
    #[error("blob type {0} is not supported")]
    BadBlobType(u32),
    #[error("resource {0} cannot be shown (format or kind)")]
    NotViewable(u32),
    #[error("the host-visible window refused the mapping: {0}")]
    Map(String),
    #[error("virglrenderer refused the request")]
    Renderer(#[source] RendererError),
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
            Self::UnknownContext(_) | Self::ContextExists(_) => RESP_ERR_INVALID_CONTEXT_ID,
            Self::TooManyContexts(_) => RESP_ERR_OUT_OF_MEMORY,
            Self::UnknownCapset(_)
            | Self::NotMappable(_)
            | Self::AlreadyMapped(_)
            | Self::NotMapped(_)
            | Self::OutsideWindow { .. }
            | Self::BadBlobType(_)
            | Self::NotViewable(_) => RESP_ERR_INVALID_PARAMETER,
            Self::NoBacking(_)
            | Self::BackingAttached(_)
            | Self::Memory(_)
            | Self::Map(_)
            | Self::Renderer(_) => RESP_ERR_UNSPEC,
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
    /// Like [`Self::view`] for a RESOURCE_FLUSH of `rect`: only the pixels
    /// inside `rect` need be current (a 3D backend reads back just those).
    fn view_rect(
        &mut self,
        resource_id: u32,
        _rect: Rect,
    ) -> Result<ResourceView<'_>, BackendError> {
        self.view(resource_id)
    }
    /// What the backend holds now.
    fn usage(&self) -> BackendUsage;
    /// The 3D operations, when this backend has them.
    fn gpu3d(&mut self) -> Option<&mut dyn Gpu3d> {
        None
    }
    /// The renderer inside, after every resource and context is gone
    /// (the device keeps it across resets).
    fn into_renderer(self: Box<Self>) -> Option<crate::virgl::Renderer> {
        None
    }
}

/// RESOURCE_CREATE_BLOB's arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobRequest {
    pub ctx_id: u32,
    pub blob_mem: u32,
    pub blob_flags: u32,
    pub blob_id: u64,
    pub size: u64,
}

/// Makes host memory visible to the guest in the device's host-visible
/// shared-memory region (a PCI BAR), at an offset the guest chose.
pub trait HostVisibleWindow: Send + Sync {
    /// The window's size in bytes.
    fn size(&self) -> u64;
    /// Maps `len` bytes at `host_addr` at `offset` of the window.
    ///
    /// # Safety
    /// `host_addr..host_addr + len` must stay mapped until [`Self::unmap`]
    /// for `offset` returned.
    unsafe fn map(&self, offset: u64, host_addr: *mut u8, len: u64) -> Result<(), String>;
    /// Removes the mapping at `offset`.
    fn unmap(&self, offset: u64) -> Result<(), String>;
}

/// What the 3D side holds, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage3d {
    /// Live contexts by capset id.
    pub contexts: Vec<(u32, u64)>,
    /// Bytes of blobs mapped into the host-visible window.
    pub blob_bytes_mapped: u64,
}

/// The 3D commands (virtio 1.3 §5.7.6.8, VIRGL/CONTEXT_INIT/RESOURCE_BLOB),
/// on top of [`GpuBackend`]. Every argument comes from the guest.
pub trait Gpu3d {
    /// Capsets offered, in GET_CAPSET_INFO index order.
    fn capsets(&self) -> &[CapsetInfo];
    /// GET_CAPSET.
    fn capset(&self, capset_id: u32, version: u32) -> Result<Vec<u8>, BackendError>;
    /// CTX_CREATE; `context_init` is a capset id (0: virgl).
    fn ctx_create(
        &mut self,
        ctx_id: u32,
        context_init: u32,
        name: &[u8],
    ) -> Result<(), BackendError>;
    /// CTX_DESTROY.
    fn ctx_destroy(&mut self, ctx_id: u32) -> Result<(), BackendError>;
    /// CTX_ATTACH_RESOURCE.
    fn ctx_attach(&mut self, ctx_id: u32, resource_id: u32) -> Result<(), BackendError>;
    /// CTX_DETACH_RESOURCE.
    fn ctx_detach(&mut self, ctx_id: u32, resource_id: u32) -> Result<(), BackendError>;
    /// RESOURCE_CREATE_3D.
    fn create_3d(&mut self, resource_id: u32, args: &Create3d) -> Result<(), BackendError>;
    /// TRANSFER_TO_HOST_3D (`to_host`) or TRANSFER_FROM_HOST_3D.
    fn transfer_3d(
        &mut self,
        ctx_id: u32,
        t: &Transfer3d,
        to_host: bool,
    ) -> Result<(), BackendError>;
    /// SUBMIT_3D.
    fn submit(&mut self, ctx_id: u32, commands: &mut [u32]) -> Result<(), BackendError>;
    /// RESOURCE_CREATE_BLOB.
    fn create_blob(
        &mut self,
        resource_id: u32,
        blob: &BlobRequest,
        entries: Vec<MemEntry>,
        mem: &GuestMemory,
    ) -> Result<(), BackendError>;
    /// RESOURCE_MAP_BLOB: returns the map info (VIRTIO_GPU_MAP_CACHE_*).
    fn map_blob(&mut self, resource_id: u32, offset: u64) -> Result<u32, BackendError>;
    /// RESOURCE_UNMAP_BLOB.
    fn unmap_blob(&mut self, resource_id: u32) -> Result<(), BackendError>;
    /// SET_SCANOUT_BLOB: how the blob's pixels are laid out; returns what
    /// a scanout of it shows.
    fn scanout_blob(
        &mut self,
        blob: &ScanoutBlob,
        mem: &GuestMemory,
    ) -> Result<ResourceInfo, BackendError>;
    /// Arms a fence; false when this timeline has no renderer fence (the
    /// work before it is already done, it completes in order).
    fn create_fence(&mut self, timeline: Timeline, fence_id: u64) -> Result<bool, BackendError>;
    /// Readable when fences signalled.
    fn fence_fd(&self) -> std::os::fd::RawFd;
    /// Fences signalled since the last call.
    fn signalled(&mut self) -> Vec<FenceEvent>;
    /// What the 3D side holds.
    fn usage_3d(&self) -> Usage3d;
    /// Destroys every context and 3D resource (device reset).
    fn reset(&mut self);
}
