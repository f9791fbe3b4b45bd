//! The frontend: controlq and cursorq processing.
//!
//! [`Frontend`] is the [`QueueHandler`] the device's worker runs. For each
//! chain it gathers the device-readable bytes (at most
//! [`MAX_REQUEST_LEN`]), decodes one [`GpuCommand`], executes it against the
//! [`GpuBackend`] (resources) and [`Scanouts`] (displays, cursor), and
//! writes the response into the device-writable part of the chain; the used
//! length is the bytes written. Fences complete immediately (2D work is done
//! when the command returns): a fenced request's response carries the FENCE
//! flag with fence_id, ctx_id and ring_idx echoed.
//!
//! Both queues take any command; Linux sends UPDATE_CURSOR and MOVE_CURSOR
//! on the cursorq without a response buffer, so those get used length 0.
//! A response that doesn't fit the writable part becomes a bare ERR_UNSPEC
//! header when that fits, and nothing otherwise; a writable buffer outside
//! guest memory gets nothing written.

use std::sync::Arc;
use std::time::Instant;

use pv_devices::virtio::worker::{drain_queue, QueueHandler};
use pv_devices::GuestMemory;
use pv_display::ScanoutSink;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use super::backend::{BackendError, GpuBackend};
use super::edid;
use super::metrics::{add, command_index, GpuMetrics};
use super::protocol::{
    CtrlHdr, DecodeError, GpuCommand, Response, HDR_LEN, MAX_REQUEST_LEN, RESP_ERR_UNSPEC,
};
use super::scanout::{cursor_image, DisplayControl, ScanoutError, Scanouts};

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
            Self::Misordered | Self::BadAddress { .. } | Self::EdidNotNegotiated => RESP_ERR_UNSPEC,
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
}

impl Frontend {
    /// A frontend over `backend` with `display`'s scanouts feeding `sink`.
    /// `edid`: the driver accepted VIRTIO_GPU_F_EDID.
    pub fn new(
        backend: Box<dyn GpuBackend>,
        display: DisplayControl,
        sink: Arc<dyn ScanoutSink>,
        metrics: Arc<GpuMetrics>,
        edid: bool,
    ) -> Self {
        let scanouts = Scanouts::new(display.num_scanouts(), sink);
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
        }
    }

    /// Handles one chain end to end; returns the used length.
    pub fn process_chain(
        &mut self,
        descriptors: impl IntoIterator<Item = Descriptor>,
        mem: &GuestMemory,
    ) -> u32 {
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
            return 0;
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
        if hdr.fenced() {
            add(&self.metrics.fences, 1);
        }
        let written = self.write_response(&hdr, &response, mem);
        self.metrics.record_latency(start.elapsed());
        written
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
        (hdr, self.execute(cmd, mem))
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
                    let view = self.backend.view(resource_id)?;
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
        }
    }

    fn sync_usage(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let usage = self.backend.usage();
        self.metrics.resources.store(usage.resources, Relaxed);
        self.metrics.host_bytes.store(usage.host_bytes, Relaxed);
    }

    /// Turns every scanout off and hides the cursors (the device is being
    /// reset; dropping the frontend then frees every resource).
    pub fn shutdown(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.scanouts.disable_all();
        self.metrics.resources.store(0, Relaxed);
        self.metrics.host_bytes.store(0, Relaxed);
    }

    /// The scanouts (for inspection).
    pub fn scanouts(&self) -> &Scanouts {
        &self.scanouts
    }
}

impl QueueHandler for Frontend {
    fn process_queue(&mut self, _index: usize, queue: &mut Queue, mem: &GuestMemory) -> bool {
        drain_queue(queue, mem, |chain| self.process_chain(chain, mem))
    }
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
