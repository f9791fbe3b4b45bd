//! [`Renderer`]: virglrenderer initialized for one VM, with every call
//! wrapped so that the rest of PearVisor never touches a raw pointer.
//!
//! virglrenderer keeps global state and binds its GL context to the thread
//! that initialized it, so a process has at most one [`Renderer`] and it is
//! used from the thread that created it (the type is neither `Send` nor
//! `Sync`). Fences signal on virglrenderer's own sync thread
//! (`THREAD_SYNC | ASYNC_FENCE_CB`): the callbacks only queue a
//! [`FenceEvent`] and write an eventfd, which the device's worker waits on
//! with the queue kicks — nothing polls.
//!
//! Buffers handed to virglrenderer that it keeps (the iovec arrays of a
//! resource's backing) are owned here until the resource lets go of them.
//! Guest memory behind those iovecs is checked and owned by the caller.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr, OsString};
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use libc::iovec;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::ffi::{self, Callbacks, ResourceCreateArgs, ResourceCreateBlobArgs, VirglBox};
use super::library::{LibraryInfo, VirglLibrary};

/// Capset ids (virtio-gpu `VIRTIO_GPU_CAPSET_*`).
pub const CAPSET_VIRGL: u32 = 1;
pub const CAPSET_VIRGL2: u32 = 2;
pub const CAPSET_VENUS: u32 = 4;

/// Only one renderer may exist in a process (virglrenderer is global).
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Which context types the guest may create.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ContextTypes {
    /// Vulkan through Venus (capset 4).
    pub venus: bool,
    /// OpenGL through virgl (capsets 1 and 2).
    pub virgl: bool,
}

impl ContextTypes {
    /// Whether any 3D context type is enabled.
    pub fn any(&self) -> bool {
        self.venus || self.virgl
    }
}

/// How to start virglrenderer's render server (Venus runs there) when it
/// cannot exec it itself: under a GPU runtime the server must run through
/// the runtime's dynamic loader. `program args... --socket-fd N` is run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLauncher {
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

/// Options of [`Renderer::new`].
#[derive(Debug, Clone, Default)]
pub struct RendererOptions {
    pub context_types: ContextTypes,
    /// GL ES instead of desktop GL for virgl contexts.
    pub gles: bool,
    /// Start the render server this way (None: virglrenderer execs it).
    pub server: Option<ServerLauncher>,
}

/// Errors of virglrenderer calls. The numbers are what virglrenderer
/// returned (negative or positive errno values).
#[derive(Debug, thiserror::Error)]
pub enum RendererError {
    #[error("virglrenderer is already initialized in this process")]
    AlreadyInitialized,
    #[error("no 3D context type was asked for")]
    NoContextTypes,
    #[error("virgl_renderer_init failed ({0})")]
    Init(i32),
    #[error("{what} is not available from this virglrenderer (capset {capset} is empty)")]
    MissingCapset { what: &'static str, capset: u32 },
    #[error("a {what} context cannot be created ({code}): {hint}")]
    ProbeContext {
        what: &'static str,
        code: i32,
        hint: &'static str,
    },
    #[error("cannot create the fence eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("{call} failed ({code})")]
    Call { call: &'static str, code: i32 },
    #[error("{0} iovecs are too many")]
    TooManyIovecs(usize),
    #[error("command buffer of {0} bytes is not a whole number of dwords")]
    UnalignedCommands(usize),
}

fn check(call: &'static str, code: c_int) -> Result<(), RendererError> {
    if code == 0 {
        Ok(())
    } else {
        Err(RendererError::Call { call, code })
    }
}

/// Which timeline a fence belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timeline {
    /// The device-wide timeline (fences without a ring index; virgl's ctx0).
    Global,
    /// Ring `ring_idx` of context `ctx_id`.
    Context { ctx_id: u32, ring_idx: u32 },
}

/// A fence virglrenderer signalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FenceEvent {
    pub timeline: Timeline,
    /// For [`Timeline::Global`] only the low 32 bits are meaningful.
    pub fence_id: u64,
}

/// Signalled fences, filled by virglrenderer's sync thread, drained by the
/// device worker; `eventfd` becomes readable when there are some.
pub struct FenceQueue {
    events: Mutex<Vec<FenceEvent>>,
    eventfd: EventFd,
}

impl FenceQueue {
    fn new() -> Result<Self, RendererError> {
        Ok(Self {
            events: Mutex::new(Vec::new()),
            eventfd: EventFd::new(EFD_NONBLOCK).map_err(RendererError::EventFd)?,
        })
    }

    fn push(&self, event: FenceEvent) {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(event);
        // A full counter still leaves the fd readable; nothing is lost.
        let _ = self.eventfd.write(1);
    }

    /// Takes every signalled fence, oldest first.
    pub fn drain(&self) -> Vec<FenceEvent> {
        let _ = self.eventfd.read();
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Readable while fences are queued.
    pub fn eventfd(&self) -> &EventFd {
        &self.eventfd
    }
}

/// What the C callbacks reach through the cookie.
struct CallbackState {
    fences: Arc<FenceQueue>,
    server: Option<ServerLauncher>,
    servers: Mutex<Vec<Child>>,
}

unsafe extern "C" fn write_fence(cookie: *mut c_void, fence: u32) {
    // SAFETY: the cookie is the CallbackState the Renderer keeps alive
    // (boxed, never moved) until virgl_renderer_cleanup returned.
    let state = unsafe { &*(cookie as *const CallbackState) };
    state.fences.push(FenceEvent {
        timeline: Timeline::Global,
        fence_id: u64::from(fence),
    });
}

unsafe extern "C" fn write_context_fence(
    cookie: *mut c_void,
    ctx_id: u32,
    ring_idx: u32,
    fence: u64,
) {
    // SAFETY: as in write_fence.
    let state = unsafe { &*(cookie as *const CallbackState) };
    state.fences.push(FenceEvent {
        timeline: Timeline::Context { ctx_id, ring_idx },
        fence_id: fence,
    });
}

unsafe extern "C" fn get_server_fd(cookie: *mut c_void, version: u32) -> c_int {
    // SAFETY: as in write_fence.
    let state = unsafe { &*(cookie as *const CallbackState) };
    if version != 0 {
        log::error!("virglrenderer asked for render server protocol {version}; only 0 is known");
        return -1;
    }
    let Some(launcher) = &state.server else {
        return -1;
    };
    // Started from an unfiltered thread: the renderer's syscall filter
    // allows no new processes.
    let started = pv_seccomp::spawn("render-server-start", {
        let launcher = launcher.clone();
        move || start_server(&launcher)
    })
    .and_then(|t| {
        t.join()
            .unwrap_or_else(|_| Err(std::io::Error::other("its starter thread panicked")))
    });
    match started {
        Ok((fd, child)) => {
            state
                .servers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(child);
            fd.into_raw_fd()
        }
        Err(e) => {
            log::error!(
                "cannot start the render server {}: {e}",
                launcher.program.display()
            );
            -1
        }
    }
}

/// Starts `launcher` with one end of a SOCK_SEQPACKET pair as `--socket-fd`;
/// returns the other end.
fn start_server(launcher: &ServerLauncher) -> std::io::Result<(OwnedFd, Child)> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: socketpair writes two descriptors into the array it is given.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let child_fd = theirs.as_raw_fd();
    let mut cmd = Command::new(&launcher.program);
    cmd.args(&launcher.args)
        .arg("--socket-fd")
        .arg(child_fd.to_string());
    // SAFETY: the closure runs in the forked child before exec and only
    // calls fcntl, which is async-signal-safe, to let the server inherit
    // its end of the socket pair.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(child_fd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop(theirs);
    Ok((ours, child))
}

unsafe extern "C" fn log_message(level: c_int, message: *const c_char, _user: *mut c_void) {
    if message.is_null() {
        return;
    }
    // SAFETY: virglrenderer passes a NUL-terminated message valid for the call.
    let text = unsafe { CStr::from_ptr(message) }.to_string_lossy();
    let text = text.trim_end();
    match level {
        ffi::LOG_LEVEL_DEBUG => log::debug!(target: "virglrenderer", "{text}"),
        ffi::LOG_LEVEL_INFO => log::info!(target: "virglrenderer", "{text}"),
        ffi::LOG_LEVEL_WARNING => log::warn!(target: "virglrenderer", "{text}"),
        _ => log::error!(target: "virglrenderer", "{text}"),
    }
}

/// A capset the renderer offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CapsetInfo {
    pub id: u32,
    pub max_version: u32,
    pub max_size: u32,
}

/// A 3D resource (RESOURCE_CREATE_3D).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resource3d {
    pub target: u32,
    pub format: u32,
    pub bind: u32,
    pub width: u32,
    pub height: u32,
    pub depth: u32,
    pub array_size: u32,
    pub last_level: u32,
    pub nr_samples: u32,
    pub flags: u32,
}

/// A transfer between a resource and its backing (TRANSFER_*_HOST_3D).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transfer {
    pub resource_id: u32,
    pub ctx_id: u32,
    pub level: u32,
    pub stride: u32,
    pub layer_stride: u32,
    pub bx: VirglBox,
    /// Byte offset into the backing.
    pub offset: u64,
}

/// A blob resource (RESOURCE_CREATE_BLOB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blob {
    pub ctx_id: u32,
    pub blob_mem: u32,
    pub blob_flags: u32,
    pub blob_id: u64,
    pub size: u64,
}

/// A host mapping of a blob resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobMapping {
    pub addr: *mut u8,
    pub size: u64,
    /// `VIRGL_RENDERER_MAP_CACHE_*`.
    pub map_info: u32,
}

/// An exported blob: a file descriptor and its kind (`BLOB_FD_TYPE_*`).
#[derive(Debug)]
pub struct ExportedBlob {
    pub fd: OwnedFd,
    pub fd_type: u32,
}

/// A resource's description from virglrenderer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceDescription {
    pub virgl_format: u32,
    pub width: u32,
    pub height: u32,
    pub depth: u32,
    pub stride: u32,
    pub drm_fourcc: i32,
}

/// One host memory range handed to virglrenderer (an `iovec`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostRange {
    pub addr: *mut u8,
    pub len: usize,
}

fn to_iovecs(ranges: &[HostRange]) -> Box<[iovec]> {
    ranges
        .iter()
        .map(|r| iovec {
            iov_base: r.addr.cast(),
            iov_len: r.len,
        })
        .collect()
}

/// virglrenderer, initialized (see the module docs).
pub struct Renderer {
    lib: Arc<VirglLibrary>,
    // Boxed so their addresses stay fixed while virglrenderer holds them.
    callbacks: Box<Callbacks>,
    state: Box<CallbackState>,
    fences: Arc<FenceQueue>,
    capsets: Vec<CapsetInfo>,
    context_types: ContextTypes,
    /// iovec arrays virglrenderer keeps pointers to, per resource.
    backings: HashMap<u32, Box<[iovec]>>,
    /// Not Sync: virglrenderer must never be called from two threads at once.
    _not_sync: PhantomData<std::cell::Cell<()>>,
}

// SAFETY: a Renderer may move to another thread: every virglrenderer call
// goes through it and it is not Sync, so calls never run concurrently; the
// iovec arrays it owns point into guest memory that outlives it; the state
// the C callbacks reach is Sync (a mutex and an eventfd). virglrenderer's
// GL context is bound to the thread that initialized it, so the device
// keeps it on one thread for the whole VM (a correctness matter, not
// memory safety).
unsafe impl Send for Renderer {}

impl Renderer {
    /// Initializes virglrenderer for `options.context_types` and proves it
    /// works by creating (and destroying) a context of each type: its init
    /// succeeds even when the render server cannot start.
    pub fn new(
        lib: Arc<VirglLibrary>,
        options: RendererOptions,
    ) -> Result<Renderer, RendererError> {
        let types = options.context_types;
        if !types.any() {
            return Err(RendererError::NoContextTypes);
        }
        if ACTIVE.swap(true, Ordering::AcqRel) {
            return Err(RendererError::AlreadyInitialized);
        }
        let fences = match FenceQueue::new() {
            Ok(f) => Arc::new(f),
            Err(e) => {
                ACTIVE.store(false, Ordering::Release);
                return Err(e);
            }
        };
        let state = Box::new(CallbackState {
            fences: fences.clone(),
            server: options.server.clone(),
            servers: Mutex::new(Vec::new()),
        });
        let mut callbacks = Box::new(Callbacks {
            version: ffi::CALLBACKS_VERSION,
            write_fence: Some(write_fence),
            create_gl_context: None,
            destroy_gl_context: None,
            make_current: None,
            get_drm_fd: None,
            write_context_fence: Some(write_context_fence),
            get_server_fd: options.server.as_ref().map(|_| get_server_fd as _),
            get_egl_display: None,
        });
        let mut flags = ffi::THREAD_SYNC | ffi::ASYNC_FENCE_CB;
        if types.venus {
            flags |= ffi::VENUS | ffi::RENDER_SERVER;
        }
        if types.virgl {
            flags |= ffi::USE_EGL | ffi::USE_SURFACELESS;
            if options.gles {
                flags |= ffi::USE_GLES;
            }
        } else {
            flags |= ffi::NO_VIRGL;
        }
        let api = lib.api();
        if let Some(set_log) = api.virgl_set_log_callback {
            // SAFETY: log_message is a valid callback for the process'
            // lifetime and takes no user data.
            unsafe { set_log(log_message, std::ptr::null_mut(), None) };
        }
        let cookie = &*state as *const CallbackState as *mut c_void;
        // SAFETY: `cookie` and `callbacks` point to boxes the Renderer owns
        // until after virgl_renderer_cleanup; ACTIVE guarantees no other
        // initialization in this process.
        let rc = unsafe { (api.virgl_renderer_init)(cookie, flags, &mut *callbacks) };
        let mut renderer = Renderer {
            lib,
            callbacks,
            state,
            fences,
            capsets: Vec::new(),
            context_types: types,
            backings: HashMap::new(),
            _not_sync: PhantomData,
        };
        if rc != 0 {
            // Drop runs cleanup, which is harmless after a failed init.
            return Err(RendererError::Init(rc));
        }
        let wanted: &[(u32, &'static str, bool)] = &[
            (CAPSET_VIRGL, "virgl (GL)", types.virgl),
            (CAPSET_VIRGL2, "virgl2 (GL)", types.virgl),
            (CAPSET_VENUS, "Venus (Vulkan)", types.venus),
        ];
        for &(id, what, on) in wanted {
            if !on {
                continue;
            }
            let (mut max_version, mut max_size) = (0u32, 0u32);
            // SAFETY: plain out-parameters.
            unsafe {
                (renderer.lib.api().virgl_renderer_get_cap_set)(id, &mut max_version, &mut max_size)
            };
            if max_size == 0 {
                return Err(RendererError::MissingCapset { what, capset: id });
            }
            renderer.capsets.push(CapsetInfo {
                id,
                max_version,
                max_size,
            });
        }
        renderer.probe()?;
        Ok(renderer)
    }

    /// Creates and destroys one context of each enabled type.
    fn probe(&mut self) -> Result<(), RendererError> {
        const PROBE_CTX: u32 = u32::MAX;
        let probes: &[(bool, u32, &'static str, &'static str)] = &[
            (
                self.context_types.venus,
                CAPSET_VENUS,
                "Venus",
                "the render server did not start or found no usable Vulkan device \
                 (run with RUST_LOG=virglrenderer=debug for its messages)",
            ),
            (
                self.context_types.virgl,
                CAPSET_VIRGL2,
                "virgl",
                "no usable EGL/OpenGL on this host (check libEGL and its vendor files)",
            ),
        ];
        for &(on, capset, what, hint) in probes {
            if !on {
                continue;
            }
            let name = format!("pearvisor-probe-{what}");
            match self.create_context(PROBE_CTX, capset, &name) {
                Ok(()) => self.destroy_context(PROBE_CTX),
                Err(RendererError::Call { code, .. }) => {
                    return Err(RendererError::ProbeContext { what, code, hint })
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The library in use.
    pub fn library(&self) -> &LibraryInfo {
        self.lib.info()
    }

    /// The context types enabled.
    pub fn context_types(&self) -> ContextTypes {
        self.context_types
    }

    /// The capsets enabled, in id order.
    pub fn capsets(&self) -> &[CapsetInfo] {
        &self.capsets
    }

    /// Signalled fences.
    pub fn fences(&self) -> &Arc<FenceQueue> {
        &self.fences
    }

    /// The bytes of capset `id` at `version` (None: not an enabled capset).
    pub fn capset(&self, id: u32, version: u32) -> Option<Vec<u8>> {
        let info = self.capsets.iter().find(|c| c.id == id)?;
        let mut data = vec![0u8; info.max_size as usize];
        // SAFETY: `data` holds max_size bytes, the most virglrenderer writes
        // for this capset.
        unsafe { (self.lib.api().virgl_renderer_fill_caps)(id, version, data.as_mut_ptr().cast()) };
        Some(data)
    }

    /// CTX_CREATE with the context-init capset id (0: virgl's default).
    pub fn create_context(
        &mut self,
        ctx_id: u32,
        capset_id: u32,
        name: &str,
    ) -> Result<(), RendererError> {
        let name = name.as_bytes();
        let flags = capset_id & 0xff;
        // SAFETY: the name pointer and length describe a live byte slice;
        // virglrenderer copies it.
        let rc = unsafe {
            (self.lib.api().virgl_renderer_context_create_with_flags)(
                ctx_id,
                flags,
                name.len() as u32,
                name.as_ptr().cast(),
            )
        };
        check("virgl_renderer_context_create_with_flags", rc)
    }

    /// CTX_DESTROY.
    pub fn destroy_context(&mut self, ctx_id: u32) {
        // SAFETY: virglrenderer ignores unknown ids.
        unsafe { (self.lib.api().virgl_renderer_context_destroy)(ctx_id) }
    }

    /// CTX_ATTACH_RESOURCE.
    pub fn attach_resource(&mut self, ctx_id: u32, resource_id: u32) {
        // SAFETY: virglrenderer ignores unknown ids.
        unsafe {
            (self.lib.api().virgl_renderer_ctx_attach_resource)(
                ctx_id as c_int,
                resource_id as c_int,
            )
        }
    }

    /// CTX_DETACH_RESOURCE.
    pub fn detach_resource(&mut self, ctx_id: u32, resource_id: u32) {
        // SAFETY: virglrenderer ignores unknown ids.
        unsafe {
            (self.lib.api().virgl_renderer_ctx_detach_resource)(
                ctx_id as c_int,
                resource_id as c_int,
            )
        }
    }

    /// RESOURCE_CREATE_3D (and the 3D path of RESOURCE_CREATE_2D).
    pub fn create_resource(
        &mut self,
        resource_id: u32,
        r: &Resource3d,
    ) -> Result<(), RendererError> {
        let mut args = ResourceCreateArgs {
            handle: resource_id,
            target: r.target,
            format: r.format,
            bind: r.bind,
            width: r.width,
            height: r.height,
            depth: r.depth,
            array_size: r.array_size,
            last_level: r.last_level,
            nr_samples: r.nr_samples,
            flags: r.flags,
        };
        // SAFETY: `args` is a valid create-args struct; no iovecs are passed.
        let rc = unsafe {
            (self.lib.api().virgl_renderer_resource_create)(&mut args, std::ptr::null_mut(), 0)
        };
        check("virgl_renderer_resource_create", rc)
    }

    /// RESOURCE_UNREF: detaches and frees the backing array too.
    pub fn unref_resource(&mut self, resource_id: u32) {
        self.detach_backing(resource_id);
        // SAFETY: virglrenderer ignores unknown ids.
        unsafe { (self.lib.api().virgl_renderer_resource_unref)(resource_id) };
        self.backings.remove(&resource_id);
    }

    /// RESOURCE_ATTACH_BACKING.
    ///
    /// # Safety
    /// Every range must be host memory that stays mapped and is not used
    /// for anything else virglrenderer must not see until the backing is
    /// detached or the resource unreferenced (the guest's RAM).
    pub unsafe fn attach_backing(
        &mut self,
        resource_id: u32,
        ranges: &[HostRange],
    ) -> Result<(), RendererError> {
        let count = c_int::try_from(ranges.len())
            .map_err(|_| RendererError::TooManyIovecs(ranges.len()))?;
        let mut iovecs = to_iovecs(ranges);
        // SAFETY: the iovec array is owned by `self.backings` until detach;
        // the caller guarantees the memory it describes.
        let rc = unsafe {
            (self.lib.api().virgl_renderer_resource_attach_iov)(
                resource_id as c_int,
                iovecs.as_mut_ptr(),
                count,
            )
        };
        check("virgl_renderer_resource_attach_iov", rc)?;
        self.backings.insert(resource_id, iovecs);
        Ok(())
    }

    /// RESOURCE_DETACH_BACKING.
    pub fn detach_backing(&mut self, resource_id: u32) {
        let mut iov: *mut iovec = std::ptr::null_mut();
        let mut count: c_int = 0;
        // SAFETY: out-parameters; virglrenderer hands back the array we own
        // (or nothing), which is then dropped below.
        unsafe {
            (self.lib.api().virgl_renderer_resource_detach_iov)(
                resource_id as c_int,
                &mut iov,
                &mut count,
            )
        };
        self.backings.remove(&resource_id);
    }

    /// TRANSFER_TO_HOST_2D/3D: from the resource's backing into the resource.
    pub fn transfer_write(&mut self, t: &Transfer) -> Result<(), RendererError> {
        let mut bx = t.bx;
        // SAFETY: with no iovecs given virglrenderer uses the resource's
        // attached backing, whose memory the attach contract covers; it
        // bounds-checks the box against the resource.
        let rc = unsafe {
            (self.lib.api().virgl_renderer_transfer_write_iov)(
                t.resource_id,
                t.ctx_id,
                t.level as c_int,
                t.stride,
                t.layer_stride,
                &mut bx,
                t.offset,
                std::ptr::null_mut(),
                0,
            )
        };
        check("virgl_renderer_transfer_write_iov", rc)
    }

    /// TRANSFER_FROM_HOST_3D: from the resource into its backing.
    pub fn transfer_read(&mut self, t: &Transfer) -> Result<(), RendererError> {
        let mut bx = t.bx;
        // SAFETY: as in transfer_write.
        let rc = unsafe {
            (self.lib.api().virgl_renderer_transfer_read_iov)(
                t.resource_id,
                t.ctx_id,
                t.level,
                t.stride,
                t.layer_stride,
                &mut bx,
                t.offset,
                std::ptr::null_mut(),
                0,
            )
        };
        check("virgl_renderer_transfer_read_iov", rc)
    }

    /// Reads `bx` of a resource into `out`, its first row at byte `offset`
    /// and rows `stride` bytes apart, for the display sinks.
    pub fn read_into(
        &mut self,
        resource_id: u32,
        bx: VirglBox,
        stride: u32,
        offset: u64,
        out: &mut [u8],
    ) -> Result<(), RendererError> {
        let mut bx = bx;
        let mut iov = iovec {
            iov_base: out.as_mut_ptr().cast(),
            iov_len: out.len(),
        };
        // SAFETY: the iovec describes `out`, borrowed mutably for the call;
        // virglrenderer bounds the copy by iov_len.
        let rc = unsafe {
            (self.lib.api().virgl_renderer_transfer_read_iov)(
                resource_id,
                0,
                0,
                stride,
                0,
                &mut bx,
                offset,
                &mut iov,
                1,
            )
        };
        check("virgl_renderer_transfer_read_iov", rc)
    }

    /// SUBMIT_3D: a command stream for context `ctx_id`.
    pub fn submit(&mut self, ctx_id: u32, commands: &mut [u32]) -> Result<(), RendererError> {
        let ndw = c_int::try_from(commands.len())
            .map_err(|_| RendererError::UnalignedCommands(commands.len() * 4))?;
        // SAFETY: the buffer holds `ndw` dwords; virglrenderer parses it as
        // untrusted input and does not keep it.
        let rc = unsafe {
            (self.lib.api().virgl_renderer_submit_cmd)(
                commands.as_mut_ptr().cast(),
                ctx_id as c_int,
                ndw,
            )
        };
        check("virgl_renderer_submit_cmd", rc)
    }

    /// A fence on the device-wide timeline (signals through
    /// [`Timeline::Global`] with the low 32 bits of `fence_id`).
    pub fn create_fence(&mut self, fence_id: u64, ctx_id: u32) -> Result<(), RendererError> {
        // SAFETY: plain values.
        let rc = unsafe {
            (self.lib.api().virgl_renderer_create_fence)(fence_id as u32 as c_int, ctx_id)
        };
        check("virgl_renderer_create_fence", rc)
    }

    /// A fence on ring `ring_idx` of context `ctx_id`.
    pub fn create_context_fence(
        &mut self,
        ctx_id: u32,
        ring_idx: u32,
        fence_id: u64,
    ) -> Result<(), RendererError> {
        // SAFETY: plain values; virglrenderer checks the context id.
        let rc = unsafe {
            (self.lib.api().virgl_renderer_context_create_fence)(ctx_id, 0, ring_idx, fence_id)
        };
        check("virgl_renderer_context_create_fence", rc)
    }

    /// RESOURCE_CREATE_BLOB. GUEST and HOST3D_GUEST blobs take `ranges` of
    /// guest memory as their backing.
    ///
    /// # Safety
    /// As for [`Renderer::attach_backing`], for `ranges`.
    pub unsafe fn create_blob(
        &mut self,
        resource_id: u32,
        blob: &Blob,
        ranges: &[HostRange],
    ) -> Result<(), RendererError> {
        let count =
            u32::try_from(ranges.len()).map_err(|_| RendererError::TooManyIovecs(ranges.len()))?;
        let iovecs = to_iovecs(ranges);
        let args = ResourceCreateBlobArgs {
            res_handle: resource_id,
            ctx_id: blob.ctx_id,
            blob_mem: blob.blob_mem,
            blob_flags: blob.blob_flags,
            blob_id: blob.blob_id,
            size: blob.size,
            iovecs: if ranges.is_empty() {
                std::ptr::null()
            } else {
                iovecs.as_ptr()
            },
            num_iovs: count,
        };
        // SAFETY: `args` is valid; the iovec array is kept in
        // `self.backings` for as long as the resource may use it.
        let rc = unsafe { (self.lib.api().virgl_renderer_resource_create_blob)(&args) };
        check("virgl_renderer_resource_create_blob", rc)?;
        if !ranges.is_empty() {
            self.backings.insert(resource_id, iovecs);
        }
        Ok(())
    }

    /// Maps a MAPPABLE blob into this process.
    pub fn map_blob(&mut self, resource_id: u32) -> Result<BlobMapping, RendererError> {
        let mut addr: *mut c_void = std::ptr::null_mut();
        let mut size = 0u64;
        let api = self.lib.api();
        // SAFETY: out-parameters.
        let rc = unsafe { (api.virgl_renderer_resource_map)(resource_id, &mut addr, &mut size) };
        check("virgl_renderer_resource_map", rc)?;
        let mut map_info = 0u32;
        // SAFETY: out-parameter.
        let rc = unsafe { (api.virgl_renderer_resource_get_map_info)(resource_id, &mut map_info) };
        if rc != 0 {
            map_info = ffi::MAP_CACHE_CACHED;
        }
        if addr.is_null() || size == 0 {
            // SAFETY: undoes the map above.
            unsafe { (api.virgl_renderer_resource_unmap)(resource_id) };
            return Err(RendererError::Call {
                call: "virgl_renderer_resource_map (empty mapping)",
                code: -libc::EINVAL,
            });
        }
        Ok(BlobMapping {
            addr: addr.cast(),
            size,
            map_info: map_info & ffi::MAP_CACHE_MASK,
        })
    }

    /// Undoes [`Renderer::map_blob`]; the mapping's address is invalid after.
    pub fn unmap_blob(&mut self, resource_id: u32) -> Result<(), RendererError> {
        // SAFETY: virglrenderer checks the id and that it is mapped.
        let rc = unsafe { (self.lib.api().virgl_renderer_resource_unmap)(resource_id) };
        check("virgl_renderer_resource_unmap", rc)
    }

    /// Exports a blob as a file descriptor.
    pub fn export_blob(&mut self, resource_id: u32) -> Result<ExportedBlob, RendererError> {
        let mut fd_type = 0u32;
        let mut fd: c_int = -1;
        // SAFETY: out-parameters; on success we own the returned fd.
        let rc = unsafe {
            (self.lib.api().virgl_renderer_resource_export_blob)(resource_id, &mut fd_type, &mut fd)
        };
        check("virgl_renderer_resource_export_blob", rc)?;
        if fd < 0 {
            return Err(RendererError::Call {
                call: "virgl_renderer_resource_export_blob (no fd)",
                code: -libc::EINVAL,
            });
        }
        // SAFETY: virglrenderer transferred ownership of `fd` to us.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(ExportedBlob { fd, fd_type })
    }

    /// What virglrenderer knows of a resource.
    pub fn describe(&mut self, resource_id: u32) -> Result<ResourceDescription, RendererError> {
        let mut info = ffi::ResourceInfo::default();
        // SAFETY: out-parameter.
        let rc = unsafe {
            (self.lib.api().virgl_renderer_resource_get_info)(resource_id as c_int, &mut info)
        };
        check("virgl_renderer_resource_get_info", rc)?;
        if info.fd > 0 {
            // Some versions hand out an fd here; don't leak it.
            // SAFETY: ownership of a returned fd passes to the caller.
            drop(unsafe { OwnedFd::from_raw_fd(info.fd) });
        }
        Ok(ResourceDescription {
            virgl_format: info.virgl_format,
            width: info.width,
            height: info.height,
            depth: info.depth,
            stride: info.stride,
            drm_fourcc: info.drm_fourcc,
        })
    }

    /// Lets virglrenderer retire fences it has not reported yet.
    pub fn poll(&mut self) {
        // SAFETY: no arguments.
        unsafe { (self.lib.api().virgl_renderer_poll)() }
    }
}

impl Drop for Renderer {
    fn drop(&mut self) {
        let cookie = &*self.state as *const CallbackState as *mut c_void;
        // SAFETY: the cookie is the one given to init; after cleanup
        // virglrenderer holds no pointer into `state` or `callbacks`.
        unsafe { (self.lib.api().virgl_renderer_cleanup)(cookie) };
        self.backings.clear();
        let mut servers = self.state.servers.lock().unwrap_or_else(|e| e.into_inner());
        for mut child in servers.drain(..) {
            // The server exits when its socket closes (cleanup closed it).
            let _ = child.wait();
        }
        let _ = &self.callbacks;
        ACTIVE.store(false, Ordering::Release);
    }
}
