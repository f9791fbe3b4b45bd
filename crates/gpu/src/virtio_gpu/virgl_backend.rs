//! The 3D backend: virglrenderer behind [`GpuBackend`] and [`Gpu3d`].
//!
//! 2D resources (the guest's dumb buffers: fbcon, a compositor without GL)
//! stay in host memory through [`Backend2d`], so they work with Venus alone
//! (no GL on the host). 3D resources and blobs live in virglrenderer; the
//! guest pages behind them are handed to it as iovecs checked against guest
//! memory, and [`VirglBackend`] keeps the guest memory mapped for as long
//! as it lives. Blobs the guest maps appear in the host-visible window
//! ([`HostVisibleWindow`]), page-aligned, never overlapping, inside it.
//!
//! Bounds: [`MAX_CONTEXTS`] contexts, [`MAX_RESOURCES`] resources (both
//! kinds together), HOST3D blob bytes within the 3D budget.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use pv_devices::GuestMemory;
use pv_display::Rect;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::backend::{
    BackendError, BackendUsage, BlobRequest, Gpu3d, GpuBackend, HostVisibleWindow, ResourceInfo,
    ResourceView, Usage3d,
};
use super::protocol::{pixel_format, Create3d, MemEntry, ScanoutBlob, Transfer3d};
use super::resources::{check_rect, Backend2d, MAX_RESOURCES};
use crate::virgl::ffi::{
    VirglBox, BLOB_FLAG_USE_MAPPABLE, BLOB_MEM_GUEST, BLOB_MEM_HOST3D, BLOB_MEM_HOST3D_GUEST,
};
use crate::virgl::{
    Blob, CapsetInfo, FenceEvent, HostRange, Renderer, Resource3d, Timeline, Transfer,
    CAPSET_VIRGL, CAPSET_VIRGL2,
};

/// The most contexts a guest may hold.
pub const MAX_CONTEXTS: usize = 1024;
const PAGE: u64 = 4096;
/// `PIPE_TEXTURE_2D`.
const TARGET_TEXTURE_2D: u32 = 2;

#[derive(Debug)]
enum Kind {
    /// RESOURCE_CREATE_3D; zero size when it cannot be shown.
    Classic {
        width: u32,
        height: u32,
        format: pv_display::PixelFormat,
    },
    /// RESOURCE_CREATE_BLOB.
    Blob {
        blob_mem: u32,
        flags: u32,
        size: u64,
    },
}

/// The largest scanout, as Linux's virtio_gpu caps its framebuffers.
const MAX_VIEWABLE: u32 = 8192;

/// `rect` clipped to a `width` x `height` picture; None when nothing is left.
fn clip_to(rect: Rect, width: u32, height: u32) -> Option<Rect> {
    let x1 = rect.x.saturating_add(rect.width).min(width);
    let y1 = rect.y.saturating_add(rect.height).min(height);
    (rect.x < x1 && rect.y < y1).then(|| Rect::new(rect.x, rect.y, x1 - rect.x, y1 - rect.y))
}

/// Makes room for `len` bytes in `buf`, or says the host is out of memory
/// (a failed allocation would abort the VMM).
fn reserve(buf: &mut Vec<u8>, len: usize) -> Result<(), BackendError> {
    buf.try_reserve_exact(len.saturating_sub(buf.len()))
        .map_err(|_| BackendError::Alloc(len as u64))
}

#[derive(Debug)]
struct Resource {
    kind: Kind,
    /// The guest ranges virglrenderer holds (attach_backing or a guest blob).
    backing: Vec<MemEntry>,
    /// Where the guest mapped it (offset in the window, length).
    mapped: Option<(u64, u64)>,
    /// A mapping made through virglrenderer: host address and map info
    /// (cache type) as virglrenderer reported it.
    host_map: Option<(usize, u32)>,
    /// How a scanout of this blob reads its pixels.
    layout: Option<ScanoutBlob>,
    /// HOST3D bytes charged to the budget.
    charged: u64,
}

/// virglrenderer plus host-memory 2D resources (see the module docs).
pub struct VirglBackend {
    renderer: Renderer,
    twod: Backend2d,
    resources: HashMap<u32, Resource>,
    contexts: HashMap<u32, u32>,
    window: Option<Arc<dyn HostVisibleWindow>>,
    mem: Arc<GuestMemory>,
    budget: u64,
    used: u64,
    /// Window offset → (length, resource).
    mappings: BTreeMap<u64, (u64, u32)>,
    mapped_bytes: u64,
    scratch: Vec<u8>,
}

impl VirglBackend {
    /// A backend over `renderer` for a guest whose RAM is `mem`; 2D
    /// resources may hold `max_hostmem` bytes and HOST3D blobs as much again;
    /// `window` is the host-visible region (None: blobs can't be mapped).
    pub fn new(
        renderer: Renderer,
        mem: Arc<GuestMemory>,
        max_hostmem: u64,
        window: Option<Arc<dyn HostVisibleWindow>>,
    ) -> Self {
        let budget = window
            .as_ref()
            .map_or(max_hostmem, |w| w.size().max(max_hostmem));
        Self {
            renderer,
            twod: Backend2d::new(max_hostmem),
            resources: HashMap::new(),
            contexts: HashMap::new(),
            window,
            mem,
            budget,
            used: 0,
            mappings: BTreeMap::new(),
            mapped_bytes: 0,
            scratch: Vec::new(),
        }
    }

    /// Gives the renderer back (device reset keeps it for the next driver).
    pub fn into_renderer(mut self) -> Renderer {
        Gpu3d::reset(&mut self);
        self.renderer
    }

    fn check_new_id(&self, id: u32) -> Result<(), BackendError> {
        if id == 0 {
            return Err(BackendError::ZeroResourceId);
        }
        if self.resources.contains_key(&id) || self.twod.info(id).is_ok() {
            return Err(BackendError::ResourceExists(id));
        }
        if self.resources.len() + self.twod.usage().resources as usize >= MAX_RESOURCES {
            return Err(BackendError::TooManyResources(MAX_RESOURCES));
        }
        Ok(())
    }

    fn context(&self, ctx_id: u32) -> Result<u32, BackendError> {
        self.contexts
            .get(&ctx_id)
            .copied()
            .ok_or(BackendError::UnknownContext(ctx_id))
    }

    /// Host ranges of guest memory for `entries`, each checked to lie in
    /// one guest memory region.
    fn host_ranges(&self, entries: &[MemEntry]) -> Result<Vec<HostRange>, BackendError> {
        entries
            .iter()
            .filter(|e| e.length > 0)
            .map(|e| {
                let bad = || BackendError::BadBacking {
                    addr: e.addr,
                    len: e.length,
                };
                let slice = self
                    .mem
                    .get_slice(GuestAddress(e.addr), e.length as usize)
                    .map_err(|_| bad())?;
                Ok(HostRange {
                    addr: slice.ptr_guard_mut().as_ptr(),
                    len: e.length as usize,
                })
            })
            .collect()
    }

    fn drop_mapping(&mut self, resource_id: u32) {
        let Some(res) = self.resources.get_mut(&resource_id) else {
            return;
        };
        if let Some((offset, len)) = res.mapped.take() {
            if let Some(window) = &self.window {
                if let Err(e) = window.unmap(offset) {
                    // After a reset the transport already removed it.
                    log::debug!("virtio-gpu: unmapping blob {resource_id} at {offset:#x}: {e}");
                }
            }
            self.mappings.remove(&offset);
            self.mapped_bytes = self.mapped_bytes.saturating_sub(len);
        }
        if res.host_map.take().is_some() {
            let _ = self.renderer.unmap_blob(resource_id);
        }
    }

    fn destroy_resource(&mut self, resource_id: u32) {
        self.drop_mapping(resource_id);
        if let Some(res) = self.resources.remove(&resource_id) {
            self.used = self.used.saturating_sub(res.charged);
            self.renderer.unref_resource(resource_id);
        }
    }

    /// Copies `len` bytes at `offset` of the guest ranges `entries` into
    /// `out` (zeros where the ranges end early).
    fn read_guest_linear(&self, entries: &[MemEntry], offset: u64, out: &mut [u8]) {
        out.fill(0);
        let mut base = 0u64;
        let end = offset + out.len() as u64;
        for e in entries {
            let (start, stop) = (base, base + u64::from(e.length));
            base = stop;
            if stop <= offset || start >= end {
                continue;
            }
            let from = offset.max(start);
            let to = end.min(stop);
            let dst = &mut out[(from - offset) as usize..(to - offset) as usize];
            let _ = self
                .mem
                .read_slice(dst, GuestAddress(e.addr + (from - start)));
        }
    }

    /// The rows of `rect` (clipped) of a blob shown on a scanout, into
    /// `scratch` (laid out as the whole picture).
    fn blob_pixels(&mut self, resource_id: u32, rect: Rect) -> Result<ResourceInfo, BackendError> {
        let res = self
            .resources
            .get(&resource_id)
            .ok_or(BackendError::UnknownResource(resource_id))?;
        let layout = res.layout.ok_or(BackendError::NotViewable(resource_id))?;
        let format = pixel_format(layout.format).ok_or(BackendError::BadFormat(layout.format))?;
        let (w, h) = (layout.width, layout.height);
        let row = u64::from(w) * 4;
        let stride = u64::from(layout.strides[0]);
        let offset = u64::from(layout.offsets[0]);
        let mut scratch = std::mem::take(&mut self.scratch);
        if let Err(e) = reserve(&mut scratch, (row * u64::from(h)) as usize) {
            self.scratch = scratch;
            return Err(e);
        }
        scratch.resize((row * u64::from(h)) as usize, 0);
        let rows = match clip_to(rect, w, h) {
            Some(r) => u64::from(r.y)..u64::from(r.y) + u64::from(r.height),
            None => 0..0,
        };
        match res.kind {
            Kind::Blob {
                blob_mem: BLOB_MEM_GUEST,
                ..
            } => {
                let entries = res.backing.clone();
                for y in rows {
                    let at = (y * row) as usize;
                    self.read_guest_linear(
                        &entries,
                        offset + y * stride,
                        &mut scratch[at..at + row as usize],
                    );
                }
            }
            Kind::Blob { size, .. } => {
                let addr = match res.host_map {
                    Some((a, _)) => a as *mut u8,
                    None => {
                        let m = self
                            .renderer
                            .map_blob(resource_id)
                            .map_err(BackendError::Renderer)?;
                        if m.size < size {
                            // Reads below are bounded by the blob's size.
                            let _ = self.renderer.unmap_blob(resource_id);
                            self.scratch = scratch;
                            return Err(BackendError::NotViewable(resource_id));
                        }
                        if let Some(r) = self.resources.get_mut(&resource_id) {
                            r.host_map = Some((m.addr as usize, m.map_info));
                        }
                        m.addr
                    }
                };
                for y in rows {
                    let src = offset + y * stride;
                    let at = (y * row) as usize;
                    if src + row <= size {
                        let dst = &mut scratch[at..at + row as usize];
                        // SAFETY: the mapping covers `size` bytes and
                        // src + row <= size; it stays mapped while the
                        // resource lives (host_map is unmapped on unref).
                        // The guest and the GPU may write it meanwhile, so
                        // it is copied as raw bytes, never borrowed as a
                        // slice; `dst` is host memory of `row` bytes.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                addr.add(src as usize),
                                dst.as_mut_ptr(),
                                row as usize,
                            )
                        };
                    }
                }
            }
            Kind::Classic { .. } => return Err(BackendError::NotViewable(resource_id)),
        }
        self.scratch = scratch;
        Ok(ResourceInfo {
            width: w,
            height: h,
            format,
        })
    }
}

impl GpuBackend for VirglBackend {
    fn create_2d(
        &mut self,
        resource_id: u32,
        format: u32,
        width: u32,
        height: u32,
    ) -> Result<(), BackendError> {
        self.check_new_id(resource_id)?;
        self.twod.create_2d(resource_id, format, width, height)
    }

    fn unref(&mut self, resource_id: u32) -> Result<(), BackendError> {
        if self.resources.contains_key(&resource_id) {
            self.destroy_resource(resource_id);
            Ok(())
        } else {
            self.twod.unref(resource_id)
        }
    }

    fn attach_backing(
        &mut self,
        resource_id: u32,
        entries: Vec<MemEntry>,
        mem: &GuestMemory,
    ) -> Result<(), BackendError> {
        let Some(res) = self.resources.get(&resource_id) else {
            return self.twod.attach_backing(resource_id, entries, mem);
        };
        if !res.backing.is_empty() {
            return Err(BackendError::BackingAttached(resource_id));
        }
        if entries.is_empty() {
            return Err(BackendError::NoEntries);
        }
        let ranges = self.host_ranges(&entries)?;
        // SAFETY: the ranges lie in guest RAM, which `self.mem` keeps
        // mapped for as long as this backend (and so the resource) lives.
        unsafe { self.renderer.attach_backing(resource_id, &ranges) }
            .map_err(BackendError::Renderer)?;
        if let Some(res) = self.resources.get_mut(&resource_id) {
            res.backing = entries;
        }
        Ok(())
    }

    fn detach_backing(&mut self, resource_id: u32) -> Result<(), BackendError> {
        let Some(res) = self.resources.get_mut(&resource_id) else {
            return self.twod.detach_backing(resource_id);
        };
        if res.backing.is_empty() {
            return Err(BackendError::NoBacking(resource_id));
        }
        res.backing.clear();
        self.renderer.detach_backing(resource_id);
        Ok(())
    }

    fn transfer_to_host_2d(
        &mut self,
        resource_id: u32,
        rect: Rect,
        offset: u64,
        mem: &GuestMemory,
    ) -> Result<u64, BackendError> {
        let Some(res) = self.resources.get(&resource_id) else {
            return self
                .twod
                .transfer_to_host_2d(resource_id, rect, offset, mem);
        };
        let Kind::Classic { width, height, .. } = res.kind else {
            return Err(BackendError::NotViewable(resource_id));
        };
        check_rect(rect, width, height)?;
        if res.backing.is_empty() {
            return Err(BackendError::NoBacking(resource_id));
        }
        let t = Transfer {
            resource_id,
            bx: VirglBox {
                x: rect.x,
                y: rect.y,
                z: 0,
                w: rect.width,
                h: rect.height,
                d: 1,
            },
            offset,
            ..Default::default()
        };
        self.renderer
            .transfer_write(&t)
            .map_err(BackendError::Renderer)?;
        Ok(u64::from(rect.width) * u64::from(rect.height) * 4)
    }

    fn info(&self, resource_id: u32) -> Result<ResourceInfo, BackendError> {
        match self.resources.get(&resource_id) {
            None => self.twod.info(resource_id),
            Some(res) => match (&res.kind, res.layout) {
                (_, Some(l)) => Ok(ResourceInfo {
                    width: l.width,
                    height: l.height,
                    format: pixel_format(l.format).ok_or(BackendError::BadFormat(l.format))?,
                }),
                (
                    Kind::Classic {
                        width,
                        height,
                        format,
                    },
                    None,
                ) => Ok(ResourceInfo {
                    width: *width,
                    height: *height,
                    // virglrenderer reads a texture back in its own format.
                    format: *format,
                }),
                (Kind::Blob { .. }, None) => Err(BackendError::NotViewable(resource_id)),
            },
        }
    }

    fn view(&mut self, resource_id: u32) -> Result<ResourceView<'_>, BackendError> {
        self.view_rect(resource_id, Rect::new(0, 0, u32::MAX, u32::MAX))
    }

    fn view_rect(
        &mut self,
        resource_id: u32,
        rect: Rect,
    ) -> Result<ResourceView<'_>, BackendError> {
        let Some(res) = self.resources.get(&resource_id) else {
            return self.twod.view(resource_id);
        };
        if res.layout.is_some() {
            let info = self.blob_pixels(resource_id, rect)?;
            return Ok(ResourceView {
                info,
                stride: info.width * 4,
                data: &self.scratch,
            });
        }
        let info = self.info(resource_id)?;
        let bytes = info.width as usize * info.height as usize * 4;
        reserve(&mut self.scratch, bytes)?;
        self.scratch.resize(bytes, 0);
        // Only the flushed rectangle is read back (a cursor blink in a
        // terminal costs its few pixels, not the whole frame).
        let Some(r) = clip_to(rect, info.width, info.height) else {
            return Ok(ResourceView {
                info,
                stride: info.width * 4,
                data: &self.scratch,
            });
        };
        let bx = VirglBox {
            x: r.x,
            y: r.y,
            z: 0,
            w: r.width,
            h: r.height,
            d: 1,
        };
        let stride = info.width * 4;
        let offset = u64::from(r.y) * u64::from(stride) + u64::from(r.x) * 4;
        self.renderer
            .read_into(resource_id, bx, stride, offset, &mut self.scratch)
            .map_err(BackendError::Renderer)?;
        Ok(ResourceView {
            info,
            stride,
            data: &self.scratch,
        })
    }

    fn usage(&self) -> BackendUsage {
        let two = self.twod.usage();
        BackendUsage {
            resources: two.resources + self.resources.len() as u64,
            host_bytes: two.host_bytes + self.used,
        }
    }

    fn gpu3d(&mut self) -> Option<&mut dyn Gpu3d> {
        Some(self)
    }

    fn into_renderer(self: Box<Self>) -> Option<Renderer> {
        Some((*self).into_renderer())
    }
}

impl Gpu3d for VirglBackend {
    fn capsets(&self) -> &[CapsetInfo] {
        self.renderer.capsets()
    }

    fn capset(&self, capset_id: u32, version: u32) -> Result<Vec<u8>, BackendError> {
        self.renderer
            .capset(capset_id, version)
            .ok_or(BackendError::UnknownCapset(capset_id))
    }

    fn ctx_create(
        &mut self,
        ctx_id: u32,
        context_init: u32,
        name: &[u8],
    ) -> Result<(), BackendError> {
        if ctx_id == 0 {
            return Err(BackendError::UnknownContext(0));
        }
        if self.contexts.contains_key(&ctx_id) {
            return Err(BackendError::ContextExists(ctx_id));
        }
        if self.contexts.len() >= MAX_CONTEXTS {
            return Err(BackendError::TooManyContexts(MAX_CONTEXTS));
        }
        let capset = match context_init & 0xff {
            0 => CAPSET_VIRGL2,
            id => id,
        };
        let offered = self.renderer.capsets().iter().any(|c| c.id == capset)
            || (capset == CAPSET_VIRGL
                && self
                    .renderer
                    .capsets()
                    .iter()
                    .any(|c| c.id == CAPSET_VIRGL2));
        if !offered {
            return Err(BackendError::UnknownCapset(capset));
        }
        let name = String::from_utf8_lossy(name);
        self.renderer
            .create_context(ctx_id, capset, &name)
            .map_err(BackendError::Renderer)?;
        self.contexts.insert(ctx_id, capset);
        Ok(())
    }

    fn ctx_destroy(&mut self, ctx_id: u32) -> Result<(), BackendError> {
        self.context(ctx_id)?;
        self.renderer.destroy_context(ctx_id);
        self.contexts.remove(&ctx_id);
        Ok(())
    }

    fn ctx_attach(&mut self, ctx_id: u32, resource_id: u32) -> Result<(), BackendError> {
        self.context(ctx_id)?;
        if !self.resources.contains_key(&resource_id) {
            // 2D resources live outside virglrenderer; contexts never use them.
            self.twod.info(resource_id)?;
            return Ok(());
        }
        self.renderer.attach_resource(ctx_id, resource_id);
        Ok(())
    }

    fn ctx_detach(&mut self, ctx_id: u32, resource_id: u32) -> Result<(), BackendError> {
        self.context(ctx_id)?;
        if self.resources.contains_key(&resource_id) {
            self.renderer.detach_resource(ctx_id, resource_id);
        }
        Ok(())
    }

    fn create_3d(&mut self, resource_id: u32, args: &Create3d) -> Result<(), BackendError> {
        self.check_new_id(resource_id)?;
        if args.width == 0 || args.height == 0 {
            return Err(BackendError::BadSize {
                width: args.width,
                height: args.height,
            });
        }
        let r = Resource3d {
            target: args.target,
            format: args.format,
            bind: args.bind,
            width: args.width,
            height: args.height,
            depth: args.depth,
            array_size: args.array_size,
            last_level: args.last_level,
            nr_samples: args.nr_samples,
            flags: args.flags,
        };
        self.renderer
            .create_resource(resource_id, &r)
            .map_err(BackendError::Renderer)?;
        // Only 2D textures of a 32-bit RGB format can be shown (the kernel
        // caps scanouts at 8192x8192; bigger ones stay invisible).
        let viewable = match pixel_format(args.format) {
            Some(format)
                if args.target == TARGET_TEXTURE_2D
                    && args.width <= MAX_VIEWABLE
                    && args.height <= MAX_VIEWABLE =>
            {
                Some(format)
            }
            _ => None,
        };
        self.resources.insert(
            resource_id,
            Resource {
                kind: Kind::Classic {
                    width: if viewable.is_some() { args.width } else { 0 },
                    height: if viewable.is_some() { args.height } else { 0 },
                    format: viewable.unwrap_or(pv_display::PixelFormat::B8G8R8X8),
                },
                backing: Vec::new(),
                mapped: None,
                host_map: None,
                layout: None,
                charged: 0,
            },
        );
        Ok(())
    }

    fn transfer_3d(
        &mut self,
        ctx_id: u32,
        t: &Transfer3d,
        to_host: bool,
    ) -> Result<(), BackendError> {
        if ctx_id != 0 {
            self.context(ctx_id)?;
        }
        if !self.resources.contains_key(&t.resource_id) {
            return Err(BackendError::UnknownResource(t.resource_id));
        }
        let transfer = Transfer {
            resource_id: t.resource_id,
            ctx_id,
            level: t.level,
            stride: t.stride,
            layer_stride: t.layer_stride,
            bx: VirglBox {
                x: t.bx.x,
                y: t.bx.y,
                z: t.bx.z,
                w: t.bx.w,
                h: t.bx.h,
                d: t.bx.d,
            },
            offset: t.offset,
        };
        if to_host {
            self.renderer.transfer_write(&transfer)
        } else {
            self.renderer.transfer_read(&transfer)
        }
        .map_err(BackendError::Renderer)
    }

    fn submit(&mut self, ctx_id: u32, commands: &mut [u32]) -> Result<(), BackendError> {
        self.context(ctx_id)?;
        self.renderer
            .submit(ctx_id, commands)
            .map_err(BackendError::Renderer)
    }

    fn create_blob(
        &mut self,
        resource_id: u32,
        blob: &BlobRequest,
        entries: Vec<MemEntry>,
        _mem: &GuestMemory,
    ) -> Result<(), BackendError> {
        self.check_new_id(resource_id)?;
        if blob.size == 0 {
            return Err(BackendError::BadSize {
                width: 0,
                height: 0,
            });
        }
        match blob.blob_mem {
            BLOB_MEM_GUEST => {}
            BLOB_MEM_HOST3D | BLOB_MEM_HOST3D_GUEST => {
                self.context(blob.ctx_id)?;
            }
            other => return Err(BackendError::BadBlobType(other)),
        }
        let charged = if blob.blob_mem == BLOB_MEM_GUEST {
            let total: u64 = entries.iter().map(|e| u64::from(e.length)).sum();
            if total < blob.size {
                return Err(BackendError::OutsideBacking {
                    end: blob.size,
                    len: total,
                });
            }
            0
        } else {
            match self.used.checked_add(blob.size) {
                Some(total) if total <= self.budget => blob.size,
                _ => {
                    return Err(BackendError::OutOfMemory {
                        need: blob.size,
                        used: self.used,
                        max: self.budget,
                    })
                }
            }
        };
        let ranges = if blob.blob_mem == BLOB_MEM_HOST3D {
            Vec::new()
        } else {
            self.host_ranges(&entries)?
        };
        let args = Blob {
            ctx_id: blob.ctx_id,
            blob_mem: blob.blob_mem,
            blob_flags: blob.blob_flags,
            blob_id: blob.blob_id,
            size: blob.size,
        };
        // SAFETY: the ranges lie in guest RAM, kept mapped by `self.mem`.
        unsafe { self.renderer.create_blob(resource_id, &args, &ranges) }
            .map_err(BackendError::Renderer)?;
        self.used += charged;
        self.resources.insert(
            resource_id,
            Resource {
                kind: Kind::Blob {
                    blob_mem: blob.blob_mem,
                    flags: blob.blob_flags,
                    size: blob.size,
                },
                backing: if blob.blob_mem == BLOB_MEM_HOST3D {
                    Vec::new()
                } else {
                    entries
                },
                mapped: None,
                host_map: None,
                layout: None,
                charged,
            },
        );
        Ok(())
    }

    fn map_blob(&mut self, resource_id: u32, offset: u64) -> Result<u32, BackendError> {
        let window = self
            .window
            .clone()
            .ok_or(BackendError::NotMappable(resource_id))?;
        let res = self
            .resources
            .get(&resource_id)
            .ok_or(BackendError::UnknownResource(resource_id))?;
        let Kind::Blob { flags, size, .. } = res.kind else {
            return Err(BackendError::NotMappable(resource_id));
        };
        if flags & BLOB_FLAG_USE_MAPPABLE == 0 {
            return Err(BackendError::NotMappable(resource_id));
        }
        if res.mapped.is_some() {
            return Err(BackendError::AlreadyMapped(resource_id));
        }
        let len = size.div_ceil(PAGE) * PAGE;
        let outside = BackendError::OutsideWindow {
            offset,
            size,
            window: window.size(),
        };
        if !offset.is_multiple_of(PAGE) || offset.checked_add(len).is_none_or(|e| e > window.size())
        {
            return Err(outside);
        }
        // No overlap with the mapping before or after.
        if let Some((&start, &(l, _))) = self.mappings.range(..=offset).next_back() {
            if start + l > offset {
                return Err(outside);
            }
        }
        if let Some((&start, _)) = self.mappings.range(offset..).next() {
            if start < offset + len {
                return Err(outside);
            }
        }
        let mapping = match res.host_map {
            Some((addr, map_info)) => crate::virgl::BlobMapping {
                addr: addr as *mut u8,
                size,
                map_info,
            },
            None => self
                .renderer
                .map_blob(resource_id)
                .map_err(BackendError::Renderer)?,
        };
        if mapping.size < size {
            let _ = self.renderer.unmap_blob(resource_id);
            return Err(BackendError::NotMappable(resource_id));
        }
        // SAFETY: virglrenderer's mapping covers `len` bytes (whole pages
        // of at least `size`) and stays until unmap_blob, which removes the
        // window mapping first.
        if let Err(e) = unsafe { window.map(offset, mapping.addr, len) } {
            if res.host_map.is_none() {
                let _ = self.renderer.unmap_blob(resource_id);
            }
            return Err(BackendError::Map(e));
        }
        if let Some(res) = self.resources.get_mut(&resource_id) {
            res.mapped = Some((offset, len));
            res.host_map = Some((mapping.addr as usize, mapping.map_info));
        }
        self.mappings.insert(offset, (len, resource_id));
        self.mapped_bytes += len;
        Ok(mapping.map_info)
    }

    fn unmap_blob(&mut self, resource_id: u32) -> Result<(), BackendError> {
        let res = self
            .resources
            .get(&resource_id)
            .ok_or(BackendError::UnknownResource(resource_id))?;
        if res.mapped.is_none() {
            return Err(BackendError::NotMapped(resource_id));
        }
        self.drop_mapping(resource_id);
        Ok(())
    }

    fn scanout_blob(
        &mut self,
        blob: &ScanoutBlob,
        _mem: &GuestMemory,
    ) -> Result<ResourceInfo, BackendError> {
        let id = blob.resource_id;
        let res = self
            .resources
            .get(&id)
            .ok_or(BackendError::UnknownResource(id))?;
        let Kind::Blob { size, .. } = res.kind else {
            return Err(BackendError::NotViewable(id));
        };
        let format = pixel_format(blob.format).ok_or(BackendError::BadFormat(blob.format))?;
        if blob.width == 0
            || blob.height == 0
            || blob.width > MAX_VIEWABLE
            || blob.height > MAX_VIEWABLE
        {
            return Err(BackendError::BadSize {
                width: blob.width,
                height: blob.height,
            });
        }
        let row = u64::from(blob.width) * 4;
        let stride = u64::from(blob.strides[0]);
        let end = u64::from(blob.offsets[0]) + stride * u64::from(blob.height - 1) + row;
        if stride < row || end > size {
            return Err(BackendError::OutsideBacking { end, len: size });
        }
        // An empty rectangle would pass here and fail in the scanout after
        // the layout changed under every scanout showing this blob.
        if blob.rect.width == 0 || blob.rect.height == 0 {
            return Err(BackendError::OutsideResource {
                rect: blob.rect,
                width: blob.width,
                height: blob.height,
            });
        }
        check_rect(blob.rect, blob.width, blob.height)?;
        if let Some(res) = self.resources.get_mut(&id) {
            res.layout = Some(*blob);
        }
        Ok(ResourceInfo {
            width: blob.width,
            height: blob.height,
            format,
        })
    }

    fn create_fence(&mut self, timeline: Timeline, fence_id: u64) -> Result<bool, BackendError> {
        match timeline {
            Timeline::Global => {
                if !self.renderer.context_types().virgl {
                    return Ok(false);
                }
                self.renderer
                    .create_fence(fence_id, 0)
                    .map_err(BackendError::Renderer)?;
                Ok(true)
            }
            Timeline::Context { ctx_id, ring_idx } => {
                self.context(ctx_id)?;
                self.renderer
                    .create_context_fence(ctx_id, ring_idx, fence_id)
                    .map_err(BackendError::Renderer)?;
                Ok(true)
            }
        }
    }

    fn fence_fd(&self) -> RawFd {
        self.renderer.fences().eventfd().as_raw_fd()
    }

    fn signalled(&mut self) -> Vec<FenceEvent> {
        self.renderer.fences().drain()
    }

    fn usage_3d(&self) -> Usage3d {
        let mut by_capset: BTreeMap<u32, u64> = BTreeMap::new();
        for &capset in self.contexts.values() {
            *by_capset.entry(capset).or_default() += 1;
        }
        Usage3d {
            contexts: by_capset.into_iter().collect(),
            blob_bytes_mapped: self.mapped_bytes,
        }
    }

    fn reset(&mut self) {
        let ids: Vec<u32> = self.resources.keys().copied().collect();
        for id in ids {
            self.destroy_resource(id);
        }
        for ctx in std::mem::take(&mut self.contexts).into_keys() {
            self.renderer.destroy_context(ctx);
        }
        self.twod = Backend2d::new(self.twod_max());
        self.used = 0;
        self.mappings.clear();
        self.mapped_bytes = 0;
        let _ = self.renderer.fences().drain();
    }
}

impl VirglBackend {
    fn twod_max(&self) -> u64 {
        self.twod.max_hostmem()
    }
}
