//! The C interface of libvirglrenderer (`virglrenderer.h`, 1.x), written out
//! by hand: the structs PearVisor passes, the flag values, and [`VirglApi`],
//! the table of entry points resolved from the library at run time.
//!
//! Nothing here is called directly by the rest of the crate: [`super::renderer`]
//! wraps every call with the checks that make it safe.

use std::ffi::{c_char, c_int, c_void};

use libc::iovec;

/// `VIRGL_RENDERER_CALLBACKS_VERSION` PearVisor fills in: 3 has
/// `write_context_fence` and `get_server_fd`; 4 would add
/// `get_egl_display`, which is not used.
pub const CALLBACKS_VERSION: c_int = 3;

// Flags of virgl_renderer_init.
pub const USE_EGL: c_int = 1 << 0;
pub const THREAD_SYNC: c_int = 1 << 1;
pub const USE_SURFACELESS: c_int = 1 << 3;
pub const USE_GLES: c_int = 1 << 4;
pub const VENUS: c_int = 1 << 6;
pub const NO_VIRGL: c_int = 1 << 7;
pub const ASYNC_FENCE_CB: c_int = 1 << 8;
pub const RENDER_SERVER: c_int = 1 << 9;

// Blob memory types and flags (they equal the virtio-gpu protocol's).
pub const BLOB_MEM_GUEST: u32 = 1;
pub const BLOB_MEM_HOST3D: u32 = 2;
pub const BLOB_MEM_HOST3D_GUEST: u32 = 3;
pub const BLOB_FLAG_USE_MAPPABLE: u32 = 1 << 0;
pub const BLOB_FLAG_USE_SHAREABLE: u32 = 1 << 1;
pub const BLOB_FLAG_USE_CROSS_DEVICE: u32 = 1 << 2;

// Map cache types (virgl_renderer_resource_get_map_info).
pub const MAP_CACHE_MASK: u32 = 0x0f;
pub const MAP_CACHE_NONE: u32 = 0;
pub const MAP_CACHE_CACHED: u32 = 1;
pub const MAP_CACHE_UNCACHED: u32 = 2;
pub const MAP_CACHE_WC: u32 = 3;

// Exported blob fd types.
pub const BLOB_FD_TYPE_DMABUF: u32 = 1;
pub const BLOB_FD_TYPE_OPAQUE: u32 = 2;
pub const BLOB_FD_TYPE_SHM: u32 = 3;

/// `struct virgl_renderer_callbacks` up to version 4.
#[repr(C)]
pub struct Callbacks {
    pub version: c_int,
    pub write_fence: Option<unsafe extern "C" fn(cookie: *mut c_void, fence: u32)>,
    pub create_gl_context:
        Option<unsafe extern "C" fn(*mut c_void, c_int, *mut c_void) -> *mut c_void>,
    pub destroy_gl_context: Option<unsafe extern "C" fn(*mut c_void, *mut c_void)>,
    pub make_current: Option<unsafe extern "C" fn(*mut c_void, c_int, *mut c_void) -> c_int>,
    pub get_drm_fd: Option<unsafe extern "C" fn(*mut c_void) -> c_int>,
    pub write_context_fence:
        Option<unsafe extern "C" fn(cookie: *mut c_void, ctx_id: u32, ring_idx: u32, fence: u64)>,
    pub get_server_fd: Option<unsafe extern "C" fn(cookie: *mut c_void, version: u32) -> c_int>,
    pub get_egl_display: Option<unsafe extern "C" fn(*mut c_void) -> *mut c_void>,
}

/// `struct virgl_box`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VirglBox {
    pub x: u32,
    pub y: u32,
    pub z: u32,
    pub w: u32,
    pub h: u32,
    pub d: u32,
}

/// `struct virgl_renderer_resource_create_args`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ResourceCreateArgs {
    pub handle: u32,
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

/// `struct virgl_renderer_resource_create_blob_args`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ResourceCreateBlobArgs {
    pub res_handle: u32,
    pub ctx_id: u32,
    pub blob_mem: u32,
    pub blob_flags: u32,
    pub blob_id: u64,
    pub size: u64,
    pub iovecs: *const iovec,
    pub num_iovs: u32,
}

/// `struct virgl_renderer_resource_info`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ResourceInfo {
    pub handle: u32,
    pub virgl_format: u32,
    pub width: u32,
    pub height: u32,
    pub depth: u32,
    pub flags: u32,
    pub tex_id: u32,
    pub stride: u32,
    pub drm_fourcc: c_int,
    pub fd: c_int,
}

/// `virgl_log_level_flags`.
pub const LOG_LEVEL_DEBUG: c_int = 0;
pub const LOG_LEVEL_INFO: c_int = 1;
pub const LOG_LEVEL_WARNING: c_int = 2;

pub type LogCallback =
    unsafe extern "C" fn(level: c_int, message: *const c_char, user_data: *mut c_void);
pub type FreeDataCallback = unsafe extern "C" fn(user_data: *mut c_void);

macro_rules! api {
    ($( $(#[$doc:meta])* $name:ident : fn($($arg:ty),*) $(-> $ret:ty)? ;)*) => {
        /// The entry points PearVisor uses, resolved from the loaded library.
        /// Every pointer stays valid while the `Library` it came from is
        /// loaded, which [`super::library::VirglLibrary`] guarantees by
        /// keeping both together.
        #[allow(non_snake_case)]
        pub struct VirglApi {
            $( $(#[$doc])* pub $name: unsafe extern "C" fn($($arg),*) $(-> $ret)?, )*
            /// `virgl_set_log_callback` (1.0+; absent in older libraries).
            pub virgl_set_log_callback:
                Option<unsafe extern "C" fn(LogCallback, *mut c_void, Option<FreeDataCallback>)>,
        }

        impl VirglApi {
            /// Resolves every entry point of `lib`; the name of the first
            /// missing one is the error.
            ///
            /// # Safety
            /// `lib` must be libvirglrenderer (1.x), so that each symbol has
            /// the signature declared here.
            pub unsafe fn resolve(lib: &libloading::Library) -> Result<Self, &'static str> {
                Ok(Self {
                    $(
                        // SAFETY: the caller guarantees the library is
                        // virglrenderer, whose symbol has this signature.
                        $name: unsafe {
                            let symbol: libloading::Symbol<
                                unsafe extern "C" fn($($arg),*) $(-> $ret)?,
                            > = lib
                                .get(concat!(stringify!($name), "\0").as_bytes())
                                .map_err(|_| stringify!($name))?;
                            *symbol
                        },
                    )*
                    // SAFETY: as above.
                    virgl_set_log_callback: unsafe {
                        lib.get::<unsafe extern "C" fn(
                            LogCallback,
                            *mut c_void,
                            Option<FreeDataCallback>,
                        )>(b"virgl_set_log_callback\0")
                        .ok()
                        .map(|s| *s)
                    },
                })
            }
        }
    };
}

api! {
    virgl_renderer_init: fn(*mut c_void, c_int, *mut Callbacks) -> c_int;
    virgl_renderer_cleanup: fn(*mut c_void);
    virgl_renderer_poll: fn();
    virgl_renderer_get_cap_set: fn(u32, *mut u32, *mut u32);
    virgl_renderer_fill_caps: fn(u32, u32, *mut c_void);
    virgl_renderer_context_create_with_flags: fn(u32, u32, u32, *const c_char) -> c_int;
    virgl_renderer_context_destroy: fn(u32);
    virgl_renderer_ctx_attach_resource: fn(c_int, c_int);
    virgl_renderer_ctx_detach_resource: fn(c_int, c_int);
    virgl_renderer_resource_create: fn(*mut ResourceCreateArgs, *mut iovec, u32) -> c_int;
    virgl_renderer_resource_unref: fn(u32);
    virgl_renderer_resource_attach_iov: fn(c_int, *mut iovec, c_int) -> c_int;
    virgl_renderer_resource_detach_iov: fn(c_int, *mut *mut iovec, *mut c_int);
    virgl_renderer_resource_get_info: fn(c_int, *mut ResourceInfo) -> c_int;
    virgl_renderer_transfer_write_iov:
        fn(u32, u32, c_int, u32, u32, *mut VirglBox, u64, *mut iovec, u32) -> c_int;
    virgl_renderer_transfer_read_iov:
        fn(u32, u32, u32, u32, u32, *mut VirglBox, u64, *mut iovec, c_int) -> c_int;
    virgl_renderer_submit_cmd: fn(*mut c_void, c_int, c_int) -> c_int;
    virgl_renderer_create_fence: fn(c_int, u32) -> c_int;
    virgl_renderer_context_create_fence: fn(u32, u32, u32, u64) -> c_int;
    virgl_renderer_resource_create_blob: fn(*const ResourceCreateBlobArgs) -> c_int;
    virgl_renderer_resource_map: fn(u32, *mut *mut c_void, *mut u64) -> c_int;
    virgl_renderer_resource_unmap: fn(u32) -> c_int;
    virgl_renderer_resource_get_map_info: fn(u32, *mut u32) -> c_int;
    virgl_renderer_resource_export_blob: fn(u32, *mut u32, *mut c_int) -> c_int;
}
