//! The virtio-gpu device: features, configuration space, and the worker
//! that serves the controlq and cursorq.
//!
//! A 2D device starts a worker thread at each activation. A 3D device
//! (`context-types` given) starts its renderer thread when it is built:
//! virglrenderer is loaded and initialized there, and proven by creating a
//! context of each type, so a host that cannot run what was asked for
//! stops the VM before it boots, with the reason. The same thread then
//! serves the queues of every activation (virglrenderer's GL context is
//! bound to it) and keeps the renderer across device resets.

use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use pv_devices::virtio::worker::{serve, Worker};
use pv_devices::virtio::{
    device_type, read_config_bytes, ActivateContext, ActivateError, SharedMemoryRegion, ShmMapper,
    VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use pv_display::ScanoutSink;
use vmm_sys_util::eventfd::EventFd;

use super::backend::HostVisibleWindow;
use super::frontend::Frontend;
use super::metrics::GpuMetrics;
use super::params::{GpuParams, ParamsError};
use super::protocol::{
    SHM_ID_HOST_VISIBLE, VIRTIO_GPU_F_CONTEXT_INIT, VIRTIO_GPU_F_EDID, VIRTIO_GPU_F_RESOURCE_BLOB,
    VIRTIO_GPU_F_RESOURCE_UUID, VIRTIO_GPU_F_VIRGL,
};
use super::resources::Backend2d;
use super::scanout::{DisplayControl, ResizeError};
use super::virgl_backend::VirglBackend;
use crate::virgl::runtime::RuntimeLayout;
use crate::virgl::{
    CapsetInfo, LibraryError, LibraryInfo, Renderer, RendererError, RendererOptions, VirglLibrary,
};

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
    #[error("GPU acceleration is unavailable")]
    Library(#[source] LibraryError),
    #[error("virglrenderer ({library}) cannot provide what --gpu asked for")]
    Renderer {
        library: LibraryInfo,
        #[source]
        source: RendererError,
    },
    #[error("cannot start the GPU renderer thread")]
    Thread(#[source] std::io::Error),
}

/// What the renderer thread reports once virglrenderer is up.
#[derive(Debug, Clone)]
pub struct RendererReady {
    pub library: LibraryInfo,
    pub capsets: Vec<CapsetInfo>,
}

/// Work for the renderer thread.
enum Job {
    /// Serve the queues until `stop`; send the kicks back on `done`.
    Run {
        ctx: ActivateContext,
        stop: EventFd,
        done: mpsc::Sender<Vec<EventFd>>,
        parts: FrontendParts,
    },
    Exit,
}

/// What a frontend is built from, besides the backend.
struct FrontendParts {
    display: DisplayControl,
    sink: Arc<dyn ScanoutSink>,
    metrics: Arc<GpuMetrics>,
    edid: bool,
    max_hostmem: u64,
    window: Option<Arc<dyn HostVisibleWindow>>,
}

/// The host-visible window as the transport's shared-memory region 1.
struct ShmWindow {
    mapper: Arc<dyn ShmMapper>,
    size: u64,
}

impl HostVisibleWindow for ShmWindow {
    fn size(&self) -> u64 {
        self.size
    }

    unsafe fn map(&self, offset: u64, host_addr: *mut u8, len: u64) -> Result<(), String> {
        // SAFETY: the caller's guarantee (host_addr..+len stays mapped until
        // unmap) is the one ShmMapper::map asks for.
        unsafe {
            self.mapper
                .map(SHM_ID_HOST_VISIBLE, offset, host_addr, len, true)
        }
        .map_err(|e| e.to_string())
    }

    fn unmap(&self, offset: u64) -> Result<(), String> {
        self.mapper
            .unmap(SHM_ID_HOST_VISIBLE, offset)
            .map_err(|e| e.to_string())
    }
}

/// The thread that owns virglrenderer for the device's lifetime.
struct RendererThread {
    jobs: mpsc::Sender<Job>,
    thread: Option<JoinHandle<()>>,
    running: Option<(EventFd, mpsc::Receiver<Vec<EventFd>>)>,
    ready: RendererReady,
}

impl RendererThread {
    fn start(options: RendererOptions) -> Result<Self, GpuDeviceError> {
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(THREAD_NAME.to_string())
            .spawn(move || {
                let renderer = match VirglLibrary::load() {
                    Err(e) => Err(GpuDeviceError::Library(e)),
                    Ok(lib) => {
                        let library = lib.info().clone();
                        Renderer::new(Arc::new(lib), options)
                            .map_err(|source| GpuDeviceError::Renderer { library, source })
                    }
                };
                let mut renderer = match renderer {
                    Ok(r) => {
                        // The library and the render server are up: from
                        // here on the thread (and those the driver starts)
                        // runs filtered.
                        pv_seccomp::apply_or_abort(pv_seccomp::ThreadKind::GpuRenderer);
                        let _ = ready_tx.send(Ok(RendererReady {
                            library: r.library().clone(),
                            capsets: r.capsets().to_vec(),
                        }));
                        Some(r)
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while let Ok(job) = job_rx.recv() {
                    let Job::Run {
                        ctx,
                        stop,
                        done,
                        parts,
                    } = job
                    else {
                        break;
                    };
                    let Some(r) = renderer.take() else {
                        log::error!("{THREAD_NAME}: the renderer was lost; the device cannot run");
                        let _ = done.send(ctx.queues.into_iter().map(|q| q.kick).collect());
                        continue;
                    };
                    let backend =
                        VirglBackend::new(r, ctx.mem.clone(), parts.max_hostmem, parts.window);
                    let mut frontend = Frontend::new(
                        Box::new(backend),
                        parts.display,
                        parts.sink,
                        parts.metrics,
                        parts.edid,
                    );
                    let kicks = serve(&mut frontend, ctx, &stop);
                    frontend.shutdown();
                    renderer = frontend.into_backend().into_renderer();
                    let _ = done.send(kicks);
                }
            })
            .map_err(GpuDeviceError::Thread)?;
        match ready_rx.recv() {
            Ok(Ok(ready)) => Ok(Self {
                jobs,
                thread: Some(thread),
                running: None,
                ready,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(GpuDeviceError::Thread(std::io::Error::other(
                    "the renderer thread ended during initialization",
                )))
            }
        }
    }
}

impl Drop for RendererThread {
    fn drop(&mut self) {
        if let Some((stop, _)) = &self.running {
            let _ = stop.write(1);
        }
        let _ = self.jobs.send(Job::Exit);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A virtio-gpu device with 2D resources (see the [module docs](super)).
pub struct VirtioGpu {
    params: GpuParams,
    sink: Arc<dyn ScanoutSink>,
    display: DisplayControl,
    metrics: Arc<GpuMetrics>,
    worker: Option<Worker<Frontend>>,
    renderer: Option<RendererThread>,
}

impl VirtioGpu {
    /// A device with `params.displays` scanouts whose frames and cursors go
    /// to `sink`.
    ///
    /// With 3D context types, virglrenderer is loaded and initialized now
    /// (see the module docs); under a GPU runtime its render server is
    /// started through the runtime's loader.
    pub fn new(params: GpuParams, sink: Arc<dyn ScanoutSink>) -> Result<Self, GpuDeviceError> {
        params.validate().map_err(GpuDeviceError::Params)?;
        let display = DisplayControl::new(&params);
        let renderer = if params.context_types.any() {
            Some(RendererThread::start(RendererOptions {
                context_types: params.context_types,
                gles: false,
                server: RuntimeLayout::active().map(|rt| rt.server_launcher()),
            })?)
        } else {
            None
        };
        Ok(Self {
            params,
            sink,
            display,
            metrics: Arc::new(GpuMetrics::default()),
            worker: None,
            renderer,
        })
    }

    /// What virglrenderer offers (None: a 2D device).
    pub fn renderer(&self) -> Option<&RendererReady> {
        self.renderer.as_ref().map(|r| &r.ready)
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
        let capsets = self.renderer().map_or(0, |r| r.capsets.len() as u32);
        c[12..16].copy_from_slice(&capsets.to_le_bytes());
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
        let base = VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | VIRTIO_RING_F_INDIRECT_DESC
            | (1 << VIRTIO_GPU_F_EDID);
        if self.renderer.is_none() {
            return base;
        }
        base | (1 << VIRTIO_GPU_F_VIRGL)
            | (1 << VIRTIO_GPU_F_RESOURCE_UUID)
            | (1 << VIRTIO_GPU_F_RESOURCE_BLOB)
            | (1 << VIRTIO_GPU_F_CONTEXT_INIT)
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
        if self.worker.is_some() || self.renderer.as_ref().is_some_and(|r| r.running.is_some()) {
            return Err(ActivateError::AlreadyActive);
        }
        ctx.prepare_queues(2)?;
        let edid = ctx.acked_features & (1 << VIRTIO_GPU_F_EDID) != 0;
        if let Some(rt) = &mut self.renderer {
            let stop =
                EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).map_err(ActivateError::Worker)?;
            let stop_job = stop.try_clone().map_err(ActivateError::Worker)?;
            let (done, done_rx) = mpsc::channel();
            self.display.set_interrupt(Some(ctx.interrupt.clone()));
            let parts = FrontendParts {
                display: self.display.clone(),
                sink: self.sink.clone(),
                metrics: self.metrics.clone(),
                edid,
                max_hostmem: self.params.max_hostmem,
                window: ctx.shm.clone().map(|mapper| {
                    Arc::new(ShmWindow {
                        mapper,
                        size: self.params.hostmem_window(),
                    }) as Arc<dyn HostVisibleWindow>
                }),
            };
            if rt
                .jobs
                .send(Job::Run {
                    ctx,
                    stop: stop_job,
                    done,
                    parts,
                })
                .is_err()
            {
                self.display.set_interrupt(None);
                return Err(ActivateError::Worker(std::io::Error::other(
                    "the GPU renderer thread is gone",
                )));
            }
            rt.running = Some((stop, done_rx));
            return Ok(());
        }
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

    fn shared_memory_regions(&self) -> Vec<SharedMemoryRegion> {
        match self.params.hostmem_window() {
            0 => Vec::new(),
            len => vec![SharedMemoryRegion {
                id: SHM_ID_HOST_VISIBLE,
                len,
            }],
        }
    }

    fn metrics(&self) -> Option<serde_json::Value> {
        Some(self.metrics.to_json(self.params.displays as usize))
    }

    fn reset(&mut self) -> Option<Vec<EventFd>> {
        if let Some(rt) = &mut self.renderer {
            let (stop, done) = rt.running.take()?;
            self.display.set_interrupt(None);
            let _ = stop.write(1);
            return match done.recv() {
                Ok(kicks) => Some(kicks),
                Err(_) => {
                    log::error!("{THREAD_NAME}: renderer thread ended while serving");
                    for i in 0..self.display.num_scanouts() {
                        self.sink.set_cursor(i, None);
                        self.sink.set_mode(i, None);
                    }
                    None
                }
            };
        }
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
