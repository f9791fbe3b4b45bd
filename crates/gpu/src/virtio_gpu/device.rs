//! The virtio-gpu device: features, configuration space, and the worker
//! that serves the controlq and cursorq.

use std::sync::Arc;

use pv_devices::virtio::worker::Worker;
use pv_devices::virtio::{
    device_type, read_config_bytes, ActivateContext, ActivateError, VirtioDevice,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use pv_display::ScanoutSink;
use vmm_sys_util::eventfd::EventFd;

use super::frontend::Frontend;
use super::metrics::GpuMetrics;
use super::params::{GpuParams, ParamsError};
use super::protocol::VIRTIO_GPU_F_EDID;
use super::resources::Backend2d;
use super::scanout::{DisplayControl, ResizeError};

/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Name of the worker thread.
pub const THREAD_NAME: &str = "virtio-gpu";
/// Length of `struct virtio_gpu_config`.
const CONFIG_LEN: usize = 16;
/// Offset of `events_clear` in the config space.
const EVENTS_CLEAR: u64 = 4;

/// Errors creating the device.
#[derive(Debug, thiserror::Error)]
pub enum GpuDeviceError {
    #[error("invalid GPU parameters")]
    Params(#[source] ParamsError),
}

/// A virtio-gpu device with 2D resources (see the [module docs](super)).
pub struct VirtioGpu {
    params: GpuParams,
    sink: Arc<dyn ScanoutSink>,
    display: DisplayControl,
    metrics: Arc<GpuMetrics>,
    worker: Option<Worker<Frontend>>,
}

impl VirtioGpu {
    /// A device with `params.displays` scanouts whose frames and cursors go
    /// to `sink`.
    pub fn new(params: GpuParams, sink: Arc<dyn ScanoutSink>) -> Result<Self, GpuDeviceError> {
        params.validate().map_err(GpuDeviceError::Params)?;
        let display = DisplayControl::new(&params);
        Ok(Self {
            params,
            sink,
            display,
            metrics: Arc::new(GpuMetrics::default()),
            worker: None,
        })
    }

    /// The parameters the device was built with.
    pub fn params(&self) -> &GpuParams {
        &self.params
    }

    /// The device's counters, live while it runs.
    pub fn gpu_metrics(&self) -> Arc<GpuMetrics> {
        self.metrics.clone()
    }

    /// A handle to resize displays from another thread (a window or viewer).
    pub fn display_control(&self) -> DisplayControl {
        self.display.clone()
    }

    /// Asks the guest to switch display `scanout` to `width` x `height`
    /// (see [`DisplayControl::resize`]).
    pub fn resize(&self, scanout: u32, width: u32, height: u32) -> Result<(), ResizeError> {
        self.display.resize(scanout, width, height)
    }

    fn config(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        c[0..4].copy_from_slice(&self.display.events().to_le_bytes());
        // events_clear (4..8) reads as zero.
        c[8..12].copy_from_slice(&self.display.num_scanouts().to_le_bytes());
        // num_capsets (12..16): none in 2D.
        c
    }
}

impl VirtioDevice for VirtioGpu {
    fn device_type(&self) -> u32 {
        device_type::GPU
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | VIRTIO_RING_F_INDIRECT_DESC
            | (1 << VIRTIO_GPU_F_EDID)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only events_clear is writable; a partial write clears the bits of
        // the bytes it covers.
        let mut bits = 0u32;
        for (i, &b) in data.iter().enumerate() {
            let Some(at) = offset.checked_add(i as u64) else {
                break;
            };
            if (EVENTS_CLEAR..EVENTS_CLEAR + 4).contains(&at) {
                bits |= u32::from(b) << (8 * (at - EVENTS_CLEAR));
            }
        }
        self.display.clear_events(bits);
    }

    fn activate(&mut self, mut ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.worker.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        ctx.prepare_queues(2)?;
        let edid = ctx.acked_features & (1 << VIRTIO_GPU_F_EDID) != 0;
        let frontend = Frontend::new(
            Box::new(Backend2d::new(self.params.max_hostmem)),
            self.display.clone(),
            self.sink.clone(),
            self.metrics.clone(),
            edid,
        );
        self.display.set_interrupt(Some(ctx.interrupt.clone()));
        match Worker::spawn(THREAD_NAME, frontend, ctx) {
            Ok(worker) => {
                self.worker = Some(worker);
                Ok(())
            }
            Err(e) => {
                self.display.set_interrupt(None);
                Err(ActivateError::Worker(e))
            }
        }
    }

    fn metrics(&self) -> Option<serde_json::Value> {
        Some(self.metrics.to_json(self.params.displays as usize))
    }

    fn reset(&mut self) -> Option<Vec<EventFd>> {
        let worker = self.worker.take()?;
        self.display.set_interrupt(None);
        match worker.stop() {
            Some((mut frontend, kicks)) => {
                frontend.shutdown();
                Some(kicks)
            }
            None => {
                log::error!("{THREAD_NAME}: worker thread panicked");
                for i in 0..self.display.num_scanouts() {
                    self.sink.set_cursor(i, None);
                    self.sink.set_mode(i, None);
                }
                None
            }
        }
    }
}
