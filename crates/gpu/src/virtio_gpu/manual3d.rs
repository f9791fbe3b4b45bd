//! A 3D backend without a renderer, for tests and fuzzing: 2D through
//! [`Backend2d`], Venus contexts that accept any command stream, and fences
//! that signal only when told ([`FenceControl::signal`]); a destroyed
//! context's fences are dropped unsignalled, as virglrenderer drops them. It lets the
//! frontend's fence handling (ordering per timeline, contexts destroyed
//! with fences pending) be driven deterministically.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::backend::{
    BackendError, BackendUsage, BlobRequest, Gpu3d, GpuBackend, ResourceInfo, ResourceView, Usage3d,
};
use super::protocol::{Create3d, MemEntry, ScanoutBlob, Transfer3d};
use super::resources::Backend2d;
use crate::virgl::{CapsetInfo, FenceEvent, Timeline, CAPSET_VENUS};
use pv_devices::GuestMemory;
use pv_display::Rect;

/// 2D through [`Backend2d`]; contexts and fences that do nothing until
/// [`FenceControl::signal`].
pub struct ManualFences {
    twod: Backend2d,
    contexts: Vec<u32>,
    capsets: Vec<CapsetInfo>,
    fences: Arc<FenceControl>,
}

/// The test's handle: signal fences, see which were armed.
pub struct FenceControl {
    eventfd: EventFd,
    signalled: Mutex<Vec<FenceEvent>>,
    /// The fences the frontend armed, in order.
    pub armed: Mutex<Vec<(Timeline, u64)>>,
}

impl FenceControl {
    /// Signals `fence_id` on `timeline`, as the renderer's callback would.
    pub fn signal(&self, timeline: Timeline, fence_id: u64) {
        self.signalled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(FenceEvent { timeline, fence_id });
        let _ = self.eventfd.write(1);
    }
}

impl GpuBackend for ManualFences {
    fn create_2d(&mut self, id: u32, format: u32, w: u32, h: u32) -> Result<(), BackendError> {
        self.twod.create_2d(id, format, w, h)
    }
    fn unref(&mut self, id: u32) -> Result<(), BackendError> {
        self.twod.unref(id)
    }
    fn attach_backing(
        &mut self,
        id: u32,
        entries: Vec<MemEntry>,
        mem: &GuestMemory,
    ) -> Result<(), BackendError> {
        self.twod.attach_backing(id, entries, mem)
    }
    fn detach_backing(&mut self, id: u32) -> Result<(), BackendError> {
        self.twod.detach_backing(id)
    }
    fn transfer_to_host_2d(
        &mut self,
        id: u32,
        rect: Rect,
        offset: u64,
        mem: &GuestMemory,
    ) -> Result<u64, BackendError> {
        self.twod.transfer_to_host_2d(id, rect, offset, mem)
    }
    fn info(&self, id: u32) -> Result<ResourceInfo, BackendError> {
        self.twod.info(id)
    }
    fn view(&mut self, id: u32) -> Result<ResourceView<'_>, BackendError> {
        self.twod.view(id)
    }
    fn usage(&self) -> BackendUsage {
        self.twod.usage()
    }
    fn gpu3d(&mut self) -> Option<&mut dyn Gpu3d> {
        Some(self)
    }
}

impl Gpu3d for ManualFences {
    fn capsets(&self) -> &[CapsetInfo] {
        &self.capsets
    }
    fn capset(&self, id: u32, _: u32) -> Result<Vec<u8>, BackendError> {
        Err(BackendError::UnknownCapset(id))
    }
    fn ctx_create(&mut self, ctx_id: u32, _: u32, _: &[u8]) -> Result<(), BackendError> {
        if self.contexts.contains(&ctx_id) {
            return Err(BackendError::ContextExists(ctx_id));
        }
        self.contexts.push(ctx_id);
        Ok(())
    }
    fn ctx_destroy(&mut self, ctx_id: u32) -> Result<(), BackendError> {
        let before = self.contexts.len();
        self.contexts.retain(|&c| c != ctx_id);
        if self.contexts.len() == before {
            return Err(BackendError::UnknownContext(ctx_id));
        }
        // As virglrenderer does: the context's pending fences are dropped,
        // never signalled.
        self.fences
            .armed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(t, _)| !matches!(t, Timeline::Context { ctx_id: c, .. } if *c == ctx_id));
        Ok(())
    }
    fn ctx_attach(&mut self, _: u32, _: u32) -> Result<(), BackendError> {
        Ok(())
    }
    fn ctx_detach(&mut self, _: u32, _: u32) -> Result<(), BackendError> {
        Ok(())
    }
    fn create_3d(&mut self, id: u32, _: &Create3d) -> Result<(), BackendError> {
        Err(BackendError::UnknownResource(id))
    }
    fn transfer_3d(&mut self, _: u32, t: &Transfer3d, _: bool) -> Result<(), BackendError> {
        Err(BackendError::UnknownResource(t.resource_id))
    }
    fn submit(&mut self, ctx_id: u32, _: &mut [u32]) -> Result<(), BackendError> {
        if self.contexts.contains(&ctx_id) {
            Ok(())
        } else {
            Err(BackendError::UnknownContext(ctx_id))
        }
    }
    fn create_blob(
        &mut self,
        id: u32,
        _: &BlobRequest,
        _: Vec<MemEntry>,
        _: &GuestMemory,
    ) -> Result<(), BackendError> {
        Err(BackendError::UnknownResource(id))
    }
    fn map_blob(&mut self, id: u32, _: u64) -> Result<u32, BackendError> {
        Err(BackendError::UnknownResource(id))
    }
    fn unmap_blob(&mut self, id: u32) -> Result<(), BackendError> {
        Err(BackendError::UnknownResource(id))
    }
    fn scanout_blob(
        &mut self,
        b: &ScanoutBlob,
        _: &GuestMemory,
    ) -> Result<ResourceInfo, BackendError> {
        Err(BackendError::UnknownResource(b.resource_id))
    }
    fn create_fence(&mut self, timeline: Timeline, fence_id: u64) -> Result<bool, BackendError> {
        if let Timeline::Context { ctx_id, .. } = timeline {
            if !self.contexts.contains(&ctx_id) {
                return Err(BackendError::UnknownContext(ctx_id));
            }
        }
        self.fences
            .armed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((timeline, fence_id));
        Ok(true)
    }
    fn fence_fd(&self) -> std::os::fd::RawFd {
        self.fences.eventfd.as_raw_fd()
    }
    fn signalled(&mut self) -> Vec<FenceEvent> {
        let _ = self.fences.eventfd.read();
        std::mem::take(
            &mut *self
                .fences
                .signalled
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }
    fn usage_3d(&self) -> Usage3d {
        Usage3d {
            contexts: vec![(CAPSET_VENUS, self.contexts.len() as u64)],
            blob_bytes_mapped: 0,
        }
    }
    fn reset(&mut self) {
        self.contexts.clear();
    }
}

impl ManualFences {
    /// A backend offering the Venus capset, and its fence control.
    pub fn new(max_hostmem: u64) -> (Self, Arc<FenceControl>) {
        let fences = Arc::new(FenceControl {
            eventfd: EventFd::new(EFD_NONBLOCK).expect("eventfd"),
            signalled: Mutex::new(Vec::new()),
            armed: Mutex::new(Vec::new()),
        });
        let backend = Self {
            twod: Backend2d::new(max_hostmem),
            contexts: Vec::new(),
            capsets: vec![CapsetInfo {
                id: CAPSET_VENUS,
                max_version: 0,
                max_size: 160,
            }],
            fences: fences.clone(),
        };
        (backend, fences)
    }
}
