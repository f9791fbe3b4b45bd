//! The frontend: controlq and cursorq processing.
//!
//! [`Frontend`] is the [`QueueHandler`] the device's worker runs. For each
//! chain it gathers the device-readable bytes (at most
//! [`MAX_REQUEST_LEN`]), decodes one [`GpuCommand`], executes it against the
//! [`GpuBackend`] (resources) and [`Scanouts`] (displays, cursor), and
//! writes the response into the device-writable part of the chain; the used
//! length is the bytes written. A fenced request's response carries the FENCE
//! flag with fence_id, ctx_id and ring_idx echoed. With the 2D backend the
//! work is done when the command returns, so the chain completes at once.
//! With a 3D backend the fence is armed in the renderer (on the device
//! timeline, or on the context's ring with INFO_RING_IDX) and the chain is
//! kept until the renderer signals it ([`QueueHandler::process_event`]):
//! that is when the driver sees the response. Fences of one timeline
//! complete in order; a fence the renderer cannot arm (no GL, so no device
//! timeline) completes as soon as the fences before it have.
//!
//! SUBMIT_3D's command stream follows its header in the chain; up to
//! [`MAX_SUBMIT_BYTES`](super::protocol::MAX_SUBMIT_BYTES) are read.
//!
//! Both queues take any command; Linux sends UPDATE_CURSOR and MOVE_CURSOR
//! on the cursorq without a response buffer, so those get used length 0.
//! A response that doesn't fit the writable part becomes a bare ERR_UNSPEC
//! header when that fits, and nothing otherwise; a writable buffer outside
//! guest memory gets nothing written.

use std::os::fd::RawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use pv_devices::virtio::worker::{drain_queue_deferred, QueueHandler};
use pv_devices::GuestMemory;
use pv_display::ScanoutSink;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::Queue;
use virtio_queue::QueueT;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use super::backend::{BackendError, BlobRequest, GpuBackend};
use super::edid;
use super::metrics::{add, command_index, GpuMetrics};
use super::protocol::{
    CtrlHdr, DecodeError, GpuCommand, Response, FLAG_INFO_RING_IDX, HDR_LEN, MAX_REQUEST_LEN,
    RESP_ERR_UNSPEC, SUBMIT_LEN,
};
use super::scanout::{cursor_image, DisplayControl, ScanoutError, Scanouts, MAX_CURSOR_SIZE};
use crate::virgl::{Timeline, CAPSET_VENUS};

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("device-readable descriptor after a device-writable one")]
    Misordered,
    #[error("request buffer {addr:#x}+{len:#x} is outside guest memory")]
    BadAddress { addr: u64, len: usize },
    #[error("malformed request")]
    Decode(#[source] DecodeError),
    #[error("resource operation failed")]
    Backend(#[source] BackendError),
    #[error("scanout operation failed")]
    Scanout(#[source] ScanoutError),
    #[error("GET_EDID without VIRTIO_GPU_F_EDID")]
    EdidNotNegotiated,
    #[error("{0} needs a 3D device (--gpu context-types=...)")]
    No3d(&'static str),
}

impl From<BackendError> for CommandError {
    fn from(e: BackendError) -> Self {
        Self::Backend(e)
    }
}

impl From<ScanoutError> for CommandError {
    fn from(e: ScanoutError) -> Self {
        Self::Scanout(e)
    }
}

impl CommandError {
    /// The response type the driver gets for this error.
    pub fn response_type(&self) -> u32 {
        match self {
            Self::Decode(e) => e.response_type(),
            Self::Backend(e) => e.response_type(),
            Self::Scanout(e) => e.response_type(),
            Self::Misordered
            | Self::BadAddress { .. }
            | Self::EdidNotNegotiated
            | Self::No3d(_) => RESP_ERR_UNSPEC,
        }
    }

    /// Whether the request never became a command (counted as invalid).
    fn is_invalid_request(&self) -> bool {
        matches!(
            self,
            Self::Misordered | Self::BadAddress { .. } | Self::Decode(_)
        )
    }
}

/// A fenced chain waiting for its renderer fence.
#[derive(Debug)]
struct Pending {
    queue: usize,
    head: u16,
    len: u32,
    timeline: Timeline,
    fence_id: u64,
    /// The renderer will signal it (false: it completes in order).
    armed: bool,
    signalled: bool,
    /// Its context was destroyed first: virglrenderer drops such fences
    /// without signalling them, so the device completes them itself.
    orphaned: bool,
    since: Instant,
}

/// What became of one chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainOutcome {
    /// Bytes written into the chain.
    pub len: u32,
    /// A fence the chain waits for: (timeline, fence id, armed).
    pub fence: Option<(Timeline, u64, bool)>,
}

/// Processes both queues of one GPU (see the module docs).
pub struct Frontend {
    backend: Box<dyn GpuBackend>,
    scanouts: Scanouts,
    display: DisplayControl,
    metrics: Arc<GpuMetrics>,
    edid: bool,
    request: Vec<u8>,
    response: Vec<u8>,
    readable: Vec<(GuestAddress, u32)>,
    writable: Vec<(GuestAddress, u32)>,
    submit: Vec<u32>,
    pending: Vec<Pending>,
    /// A CTX_DESTROY of this batch left pending fences to complete.
    orphans_found: bool,
    fence_fd: Option<RawFd>,
}

impl Frontend {
    /// A frontend over `backend` with `display`'s scanouts feeding `sink`.
    /// `edid`: the driver accepted VIRTIO_GPU_F_EDID.
    pub fn new(
        mut backend: Box<dyn GpuBackend>,
        display: DisplayControl,
        sink: Arc<dyn ScanoutSink>,
        metrics: Arc<GpuMetrics>,
        edid: bool,
    ) -> Self {
        let scanouts = Scanouts::new(display.num_scanouts(), sink);
        let fence_fd = backend.gpu3d().map(|g| g.fence_fd());
        Self {
            backend,
            scanouts,
            display,
            metrics,
            edid,
            request: Vec::with_capacity(256),
            response: Vec::with_capacity(256),
            readable: Vec::new(),
            writable: Vec::new(),
            submit: Vec::new(),
            pending: Vec::new(),
            orphans_found: false,
            fence_fd,
        }
    }

    /// Fenced chains still waiting for their renderer fence.
    pub fn pending_fences(&self) -> usize {
        self.pending.len()
    }

    /// Gives the backend back (the device keeps a 3D renderer across resets).
    pub fn into_backend(self) -> Box<dyn GpuBackend> {
        self.backend
    }

    /// Handles one chain end to end; returns the used length (any fence is
    /// treated as done: for backends without a renderer).
    pub fn process_chain(
        &mut self,
        descriptors: impl IntoIterator<Item = Descriptor>,
        mem: &GuestMemory,
    ) -> u32 {
        self.handle_chain(descriptors, mem).len
    }

    /// Handles one chain: the response is written; a fenced command on a
    /// 3D backend names the fence the chain must wait for.
    pub fn handle_chain(
        &mut self,
        descriptors: impl IntoIterator<Item = Descriptor>,
        mem: &GuestMemory,
    ) -> ChainOutcome {
        let start = Instant::now();
        self.readable.clear();
        self.writable.clear();
        let mut misordered = false;
        for d in descriptors {
            if d.len() == 0 {
                continue;
            }
            if d.is_write_only() {
                self.writable.push((d.addr(), d.len()));
            } else {
                misordered |= !self.writable.is_empty();
                self.readable.push((d.addr(), d.len()));
            }
        }
        if let Some(&(addr, len)) = self
            .writable
            .iter()
            .find(|&&(addr, len)| !mem.check_range(addr, len as usize))
        {
            log::debug!(
                "virtio-gpu: response buffer {:#x}+{len:#x} is outside guest memory",
                addr.raw_value()
            );
            add(&self.metrics.invalid_commands, 1);
            return ChainOutcome {
                len: 0,
                fence: None,
            };
        }

        let (hdr, result) = if misordered {
            (CtrlHdr::default(), Err(CommandError::Misordered))
        } else {
            match self.gather(mem) {
                Err(e) => (CtrlHdr::default(), Err(e)),
                Ok(()) => self.decode_and_execute(mem),
            }
        };
        let response = match result {
            Ok(r) => r,
            Err(e) => {
                log::debug!("virtio-gpu: request failed: {}", error_chain(&e));
                if e.is_invalid_request() {
                    add(&self.metrics.invalid_commands, 1);
                }
                Response::Err(e.response_type())
            }
        };
        if response.is_err() {
            add(&self.metrics.errors, 1);
        }
        let fence = if hdr.fenced() {
            add(&self.metrics.fences, 1);
            self.arm_fence(&hdr)
        } else {
            None
        };
        let written = self.write_response(&hdr, &response, mem);
        self.metrics.record_latency(start.elapsed());
        ChainOutcome {
            len: written,
            fence,
        }
    }

    /// Arms the renderer fence of a fenced request (3D backends only).
    fn arm_fence(&mut self, hdr: &CtrlHdr) -> Option<(Timeline, u64, bool)> {
        let gpu = self.backend.gpu3d()?;
        let timeline = if hdr.flags & FLAG_INFO_RING_IDX != 0 {
            Timeline::Context {
                ctx_id: hdr.ctx_id,
                ring_idx: u32::from(hdr.ring_idx),
            }
        } else {
            Timeline::Global
        };
        let armed = match gpu.create_fence(timeline, hdr.fence_id) {
            Ok(armed) => armed,
            Err(e) => {
                log::debug!("virtio-gpu: fence {} on {timeline:?}: {e}", hdr.fence_id);
                false
            }
        };
        Some((timeline, hdr.fence_id, armed))
    }

    /// Records what the renderer signalled.
    fn note_signalled(&mut self) {
        let Some(gpu) = self.backend.gpu3d() else {
            return;
        };
        for event in gpu.signalled() {
            log::trace!("virtio-gpu: signalled {event:?}");
            match event.timeline {
                Timeline::Global => add(&self.metrics.fences_global, 1),
                Timeline::Context { .. } => add(&self.metrics.fences_context, 1),
            }
            // Everything up to the signalled fence on its timeline is done.
            let upto = self.pending.iter().rposition(|p| {
                p.timeline == event.timeline
                    && p.armed
                    && match event.timeline {
                        // The device timeline reports 32-bit ids.
                        Timeline::Global => p.fence_id as u32 == event.fence_id as u32,
                        Timeline::Context { .. } => p.fence_id <= event.fence_id,
                    }
            });
            if let Some(last) = upto {
                for p in &mut self.pending[..=last] {
                    if p.timeline == event.timeline {
                        p.signalled = true;
                    }
                }
            }
        }
    }

    /// Completes, in order per timeline, the pending chains of the queues
    /// in `queues` (index, queue) that are done; returns a mask of queues
    /// whose driver must be interrupted.
    fn settle(&mut self, queues: &mut [(usize, &mut Queue)], mem: &GuestMemory) -> u64 {
        let mut mask = 0u64;
        let mut blocked: Vec<Timeline> = Vec::new();
        let mut i = 0;
        while i < self.pending.len() {
            let p = &self.pending[i];
            let ready = (p.signalled || !p.armed) && !blocked.contains(&p.timeline);
            let queue = queues.iter_mut().find(|(idx, _)| *idx == p.queue);
            match (ready, queue) {
                (true, Some((idx, q))) => {
                    let p = self.pending.remove(i);
                    if p.armed && !p.orphaned {
                        let took = p.since.elapsed();
                        self.metrics.record_fence_latency(took);
                        let (ctx, ring) = match p.timeline {
                            Timeline::Global => (0, 0),
                            Timeline::Context { ctx_id, ring_idx } => (ctx_id, ring_idx),
                        };
                        self.metrics.record_timeline_fence(ctx, ring, took);
                    }
                    log::trace!(
                        "virtio-gpu: fence {} on {:?} done after {:?} (armed: {})",
                        p.fence_id,
                        p.timeline,
                        p.since.elapsed(),
                        p.armed
                    );
                    if let Err(e) = q.add_used(mem, p.head, p.len) {
                        pv_devices::guest_warn!("virtio-gpu: cannot complete fenced chain: {e}");
                        continue;
                    }
                    if q.needs_notification(mem).unwrap_or(true) {
                        mask |= 1 << *idx;
                    }
                }
                _ => {
                    blocked.push(p.timeline);
                    i += 1;
                }
            }
        }
        mask
    }

    /// Copies the readable bytes (up to [`MAX_REQUEST_LEN`]) into `request`.
    fn gather(&mut self, mem: &GuestMemory) -> Result<(), CommandError> {
        self.request.clear();
        for &(addr, len) in &self.readable {
            let room = MAX_REQUEST_LEN - self.request.len();
            if room == 0 {
                break;
            }
            let n = (len as usize).min(room);
            let at = self.request.len();
            self.request.resize(at + n, 0);
            mem.read_slice(&mut self.request[at..], addr).map_err(|_| {
                CommandError::BadAddress {
                    addr: addr.raw_value(),
                    len: n,
                }
            })?;
        }
        Ok(())
    }

    fn decode_and_execute(
        &mut self,
        mem: &GuestMemory,
    ) -> (CtrlHdr, Result<Response, CommandError>) {
        let hdr = CtrlHdr::decode(&self.request).unwrap_or_default();
        let cmd = match GpuCommand::decode(&self.request) {
            Ok((_, cmd)) => cmd,
            Err(e) => return (hdr, Err(CommandError::Decode(e))),
        };
        add(&self.metrics.commands[command_index(&cmd)], 1);
        log::trace!(
            "virtio-gpu: {} ctx {} flags {:#x} fence {} ring {}",
            cmd.name(),
            hdr.ctx_id,
            hdr.flags,
            hdr.fence_id,
            hdr.ring_idx
        );
        if let GpuCommand::Submit3d { size } = cmd {
            return (
                hdr,
                self.read_submit(size, mem)
                    .and_then(|()| self.execute_3d(&hdr, cmd, mem)),
            );
        }
        (hdr, self.execute_3d(&hdr, cmd, mem))
    }

    /// Reads SUBMIT_3D's `size`-byte command stream (after its header) from
    /// the readable descriptors into `self.submit`.
    fn read_submit(&mut self, size: u32, mem: &GuestMemory) -> Result<(), CommandError> {
        let need = SUBMIT_LEN + size as usize;
        let mut bytes = vec![0u8; size as usize];
        let mut filled = 0usize;
        let mut skip = SUBMIT_LEN;
        for &(addr, len) in &self.readable {
            if filled == bytes.len() {
                break;
            }
            let len = len as usize;
            if skip >= len {
                skip -= len;
                continue;
            }
            let start = addr
                .checked_add(skip as u64)
                .ok_or(CommandError::BadAddress {
                    addr: addr.raw_value(),
                    len,
                })?;
            let n = (len - skip).min(bytes.len() - filled);
            mem.read_slice(&mut bytes[filled..filled + n], start)
                .map_err(|_| CommandError::BadAddress {
                    addr: start.raw_value(),
                    len: n,
                })?;
            filled += n;
            skip = 0;
        }
        if filled < bytes.len() {
            return Err(CommandError::Decode(DecodeError::Short {
                name: "SUBMIT_3D",
                need,
                got: SUBMIT_LEN + filled,
            }));
        }
        self.submit.clear();
        self.submit.extend(
            bytes
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
        add(&self.metrics.submit_bytes, u64::from(size));
        Ok(())
    }

    /// Executes a decoded command, 3D ones included.
    fn execute_3d(
        &mut self,
        hdr: &CtrlHdr,
        cmd: GpuCommand,
        mem: &GuestMemory,
    ) -> Result<Response, CommandError> {
        let name = cmd.name();
        let ctx_id = hdr.ctx_id;
        if cmd.is_3d() && self.backend.gpu3d().is_none() {
            return Err(CommandError::No3d(name));
        }
        match cmd {
            GpuCommand::GetCapsetInfo { index } => {
                let Some(gpu) = self.backend.gpu3d() else {
                    return Err(CommandError::No3d(name));
                };
                let info = gpu
                    .capsets()
                    .get(index as usize)
                    .copied()
                    .ok_or(BackendError::UnknownCapset(index))?;
                Ok(Response::OkCapsetInfo {
                    capset_id: info.id,
                    max_version: info.max_version,
                    max_size: info.max_size,
                })
            }
            GpuCommand::GetCapset { capset_id, version } => {
                let gpu = self.backend.gpu3d().ok_or(CommandError::No3d(name))?;
                Ok(Response::OkCapset(gpu.capset(capset_id, version)?))
            }
            GpuCommand::ResourceAssignUuid { resource_id } => {
                self.backend.info(resource_id).or_else(|e| match e {
                    // Blobs without a scanout layout are still resources.
                    BackendError::NotViewable(_) => Ok(super::backend::ResourceInfo {
                        width: 0,
                        height: 0,
                        format: pv_display::PixelFormat::B8G8R8X8,
                    }),
                    e => Err(e),
                })?;
                Ok(Response::OkResourceUuid(resource_uuid(resource_id)))
            }
            GpuCommand::ResourceCreateBlob {
                resource_id,
                blob_mem,
                blob_flags,
                blob_id,
                size,
                entries,
            } => {
                let gpu = self.backend.gpu3d().ok_or(CommandError::No3d(name))?;
                let blob = BlobRequest {
                    ctx_id,
                    blob_mem,
                    blob_flags,
                    blob_id,
                    size,
                };
                let r = gpu.create_blob(resource_id, &blob, entries, mem);
                self.sync_usage();
                r?;
                Ok(Response::OkNoData)
            }
            GpuCommand::SetScanoutBlob(blob) => {
                self.scanouts.check(blob.scanout_id)?;
                if blob.resource_id == 0 {
                    self.scanouts.set(blob.scanout_id, None, blob.rect)?;
                    return Ok(Response::OkNoData);
                }
                let gpu = self.backend.gpu3d().ok_or(CommandError::No3d(name))?;
                let info = gpu.scanout_blob(&blob, mem)?;
                self.scanouts
                    .set(blob.scanout_id, Some((blob.resource_id, info)), blob.rect)?;
                Ok(Response::OkNoData)
            }
            GpuCommand::CtxCreate {
                context_init,
                name: debug_name,
            } => {
                let gpu = self.backend.gpu3d().ok_or(CommandError::No3d(name))?;
                gpu.ctx_create(ctx_id, context_init, &debug_name)?;
                self.sync_usage();
                Ok(Response::OkNoData)
            }
            GpuCommand::CtxDestroy => {
                let gpu = self.backend.gpu3d().ok_or(CommandError::No3d(name))?;
                gpu.ctx_destroy(ctx_id)?;
                self.metrics.forget_timelines(Some(ctx_id));
                // Its pending fences (queued before this request) will
                // never be signalled: complete them, in order.
                for p in &mut self.pending {
                    if matches!(p.timeline, Timeline::Context { ctx_id: c, .. } if c == ctx_id) {
                        p.signalled = true;
                        p.orphaned = true;
                        self.orphans_found = true;
                    }
                }
                self.sync_usage();
                Ok(Response::OkNoData)
            }
            GpuCommand::CtxAttachResource { resource_id } => {
                let gpu = self.backend.gpu3d().ok_or(CommandError::No3d(name))?;
                gpu.ctx_attach(ctx_id, resource_id)?;
                Ok(Response::OkNoData)
            }
            GpuCommand::CtxDetachResource { resource_id } => {
                let gpu = self.backend.gpu3d().ok_or(CommandError::No3d(name))?;
                gpu.ctx_detach(ctx_id, resource_id)?;
                Ok(Response::OkNoData)
            }
            GpuCommand::ResourceCreate3d { resource_id, args } => {
                let gpu = self.backend.gpu3d().ok_or(CommandError::No3d(name))?;
                let r = gpu.create_3d(resource_id, &args);
                self.sync_usage();
                r?;
                Ok(Response::OkNoData)
            }
            GpuCommand::TransferToHost3d(t) | GpuCommand::TransferFromHost3d(t) => {
                let to_host = matches!(cmd, GpuCommand::TransferToHost3d(_));
                let gpu = self.backend.gpu3d().ok_or(CommandError::No3d(name))?;
                gpu.transfer_3d(ctx_id, &t, to_host)?;
                Ok(Response::OkNoData)
            }
            GpuCommand::Submit3d { .. } => {
                let gpu = self.backend.gpu3d().ok_or(CommandError::No3d(name))?;
                gpu.submit(ctx_id, &mut self.submit)?;
                Ok(Response::OkNoData)
            }
            GpuCommand::ResourceMapBlob {
                resource_id,
                offset,
            } => {
                let gpu = self.backend.gpu3d().ok_or(CommandError::No3d(name))?;
                let info = gpu.map_blob(resource_id, offset)?;
                self.sync_usage();
                Ok(Response::OkMapInfo(info))
            }
            GpuCommand::ResourceUnmapBlob { resource_id } => {
                let gpu = self.backend.gpu3d().ok_or(CommandError::No3d(name))?;
                gpu.unmap_blob(resource_id)?;
                self.sync_usage();
                Ok(Response::OkNoData)
            }
            cmd => self.execute(cmd, mem),
        }
    }

    /// Encodes `response` for `hdr` and writes it into the writable part;
    /// returns the bytes written.
    fn write_response(&mut self, hdr: &CtrlHdr, response: &Response, mem: &GuestMemory) -> u32 {
        let room: u64 = self.writable.iter().map(|&(_, len)| u64::from(len)).sum();
        if room < response.encoded_len() as u64 {
            if room < HDR_LEN as u64 {
                if room > 0 || !matches!(response, Response::OkNoData) {
                    log::debug!("virtio-gpu: no room for a response ({room} bytes)");
                }
                return 0;
            }
            log::debug!(
                "virtio-gpu: response of {} bytes does not fit {room} bytes",
                response.encoded_len()
            );
            add(&self.metrics.errors, u64::from(!response.is_err()));
            Response::Err(RESP_ERR_UNSPEC).encode(hdr, &mut self.response);
        } else {
            response.encode(hdr, &mut self.response);
        }
        let mut done = 0usize;
        for &(addr, len) in &self.writable {
            if done == self.response.len() {
                break;
            }
            let n = (len as usize).min(self.response.len() - done);
            // The range was checked to lie in guest memory.
            if let Err(e) = mem.write_slice(&self.response[done..done + n], addr) {
                log::debug!("virtio-gpu: cannot write response: {e}");
                return 0;
            }
            done += n;
        }
        done as u32
    }

    /// Executes one decoded command.
    pub fn execute(
        &mut self,
        cmd: GpuCommand,
        mem: &GuestMemory,
    ) -> Result<Response, CommandError> {
        match cmd {
            GpuCommand::GetDisplayInfo => Ok(Response::OkDisplayInfo(self.display.display_info())),
            GpuCommand::GetEdid { scanout_id } => {
                if !self.edid {
                    return Err(CommandError::EdidNotNegotiated);
                }
                self.scanouts.check(scanout_id)?;
                let (w, h) = self
                    .display
                    .mode(scanout_id)
                    .ok_or(ScanoutError::InvalidScanout(scanout_id))?;
                Ok(Response::OkEdid(edid::build(w, h, scanout_id).to_vec()))
            }
            GpuCommand::ResourceCreate2d {
                resource_id,
                format,
                width,
                height,
            } => {
                let r = self.backend.create_2d(resource_id, format, width, height);
                self.sync_usage();
                r?;
                Ok(Response::OkNoData)
            }
            GpuCommand::ResourceUnref { resource_id } => {
                self.backend.unref(resource_id)?;
                self.scanouts.disable_resource(resource_id);
                self.sync_usage();
                Ok(Response::OkNoData)
            }
            GpuCommand::SetScanout {
                rect,
                scanout_id,
                resource_id,
            } => {
                self.scanouts.check(scanout_id)?;
                let resource = match resource_id {
                    0 => None,
                    id => Some((id, self.backend.info(id)?)),
                };
                self.scanouts.set(scanout_id, resource, rect)?;
                Ok(Response::OkNoData)
            }
            GpuCommand::ResourceFlush { rect, resource_id } => {
                self.backend.info(resource_id)?;
                if self.scanouts.shows(resource_id) {
                    let view = self.backend.view_rect(resource_id, rect)?;
                    self.scanouts.flush(resource_id, rect, &view, &self.metrics);
                }
                Ok(Response::OkNoData)
            }
            GpuCommand::TransferToHost2d {
                rect,
                offset,
                resource_id,
            } => {
                let n = self
                    .backend
                    .transfer_to_host_2d(resource_id, rect, offset, mem)?;
                add(&self.metrics.bytes_transferred, n);
                Ok(Response::OkNoData)
            }
            GpuCommand::ResourceAttachBacking {
                resource_id,
                entries,
            } => {
                let r = self.backend.attach_backing(resource_id, entries, mem);
                self.sync_usage();
                r?;
                Ok(Response::OkNoData)
            }
            GpuCommand::ResourceDetachBacking { resource_id } => {
                self.backend.detach_backing(resource_id)?;
                self.sync_usage();
                Ok(Response::OkNoData)
            }
            GpuCommand::UpdateCursor {
                pos,
                resource_id,
                hot_x,
                hot_y,
            } => {
                self.scanouts.check(pos.scanout_id)?;
                if resource_id == 0 {
                    self.scanouts.update_cursor(pos, None)?;
                } else {
                    // Refused before a 3D resource is read back in whole.
                    let info = self.backend.info(resource_id)?;
                    if info.width > MAX_CURSOR_SIZE || info.height > MAX_CURSOR_SIZE {
                        return Err(ScanoutError::CursorTooLarge {
                            width: info.width,
                            height: info.height,
                        }
                        .into());
                    }
                    let view = self.backend.view(resource_id)?;
                    let image = cursor_image(&view, hot_x, hot_y)?;
                    self.scanouts.update_cursor(pos, Some(&image))?;
                }
                Ok(Response::OkNoData)
            }
            GpuCommand::MoveCursor { pos } => {
                self.scanouts.move_cursor(pos)?;
                Ok(Response::OkNoData)
            }
            cmd => {
                let hdr = CtrlHdr::default();
                self.execute_3d(&hdr, cmd, mem)
            }
        }
    }

    fn sync_usage(&mut self) {
        let usage = self.backend.usage();
        self.metrics.resources.store(usage.resources, Relaxed);
        self.metrics.host_bytes.store(usage.host_bytes, Relaxed);
        if let Some(gpu) = self.backend.gpu3d() {
            let u = gpu.usage_3d();
            let count = |f: &dyn Fn(u32) -> bool| -> u64 {
                u.contexts
                    .iter()
                    .filter(|(c, _)| f(*c))
                    .map(|(_, n)| n)
                    .sum()
            };
            self.metrics
                .contexts_venus
                .store(count(&|c| c == CAPSET_VENUS), Relaxed);
            self.metrics
                .contexts_virgl
                .store(count(&|c| c != CAPSET_VENUS), Relaxed);
            self.metrics
                .blob_bytes_mapped
                .store(u.blob_bytes_mapped, Relaxed);
        }
    }

    /// Turns every scanout off and hides the cursors (the device is being
    /// reset; dropping the frontend then frees every resource).
    pub fn shutdown(&mut self) {
        self.scanouts.disable_all();
        self.pending.clear();
        if let Some(gpu) = self.backend.gpu3d() {
            gpu.reset();
        }
        self.metrics.forget_timelines(None);
        for c in [
            &self.metrics.contexts_venus,
            &self.metrics.contexts_virgl,
            &self.metrics.blob_bytes_mapped,
        ] {
            c.store(0, Relaxed);
        }
        self.metrics.resources.store(0, Relaxed);
        self.metrics.host_bytes.store(0, Relaxed);
    }

    /// The scanouts (for inspection).
    pub fn scanouts(&self) -> &Scanouts {
        &self.scanouts
    }
}

impl QueueHandler for Frontend {
    fn process_queue(&mut self, index: usize, queue: &mut Queue, mem: &GuestMemory) -> bool {
        let before = self.pending.len();
        self.orphans_found = false;
        let notify = drain_queue_deferred(queue, mem, |chain| {
            let head = chain.head_index();
            let outcome = self.handle_chain(chain, mem);
            match outcome.fence {
                Some((timeline, fence_id, armed)) => {
                    self.pending.push(Pending {
                        queue: index,
                        head,
                        len: outcome.len,
                        timeline,
                        fence_id,
                        armed,
                        signalled: false,
                        orphaned: false,
                        since: Instant::now(),
                    });
                    None
                }
                None => Some(outcome.len),
            }
        });
        if self.pending.len() == before && !self.orphans_found {
            return notify;
        }
        // Fences signalled meanwhile, and ones the renderer could not arm.
        self.note_signalled();
        let mask = self.settle(&mut [(index, queue)], mem);
        notify || mask != 0
    }

    fn event_fd(&self) -> Option<RawFd> {
        self.fence_fd
    }

    /// The 2D worker's filter (the 3D thread installs its own).
    fn thread_kind(&self) -> pv_seccomp::ThreadKind {
        pv_seccomp::ThreadKind::Gpu2d
    }

    fn process_event(&mut self, queues: &mut [Queue], mem: &GuestMemory) -> u64 {
        self.note_signalled();
        let mut all: Vec<(usize, &mut Queue)> = queues.iter_mut().enumerate().collect();
        self.settle(&mut all, mem)
    }
}

/// A resource's UUID: stable, unique per resource id within the device.
pub fn resource_uuid(resource_id: u32) -> [u8; 16] {
    let mut uuid = *b"PearVisorGPU\0\0\0\0";
    uuid[12..16].copy_from_slice(&resource_id.to_be_bytes());
    // RFC 4122 version 8 (custom) and variant bits.
    uuid[6] = (uuid[6] & 0x0f) | 0x80;
    uuid[8] = (uuid[8] & 0x3f) | 0x80;
    uuid
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}
