//! `--scanout`: a buffer put on the first connected connector's CRTC with
//! the legacy KMS calls, what a compositor without atomic modesetting
//! does: either the front buffer of a GBM window surface rendered with GL,
//! or a dma-buf exported by Vulkan (imported with drmPrimeFDToHandle and
//! drmModeAddFB2; on virtio-gpu that buffer is a blob resource and the
//! kernel shows it with SET_SCANOUT_BLOB). libgbm.so.1 and libdrm.so.2
//! are opened at run time.

use std::ffi::{c_char, c_int, c_void};
use std::os::fd::{AsRawFd, OwnedFd};

use anyhow::{bail, Context, Result};
use libloading::Library;

/// `GBM_FORMAT_XRGB8888` (DRM fourcc "XR24").
pub const FORMAT_XRGB8888: u32 = 0x3432_5258;
const GBM_BO_USE_SCANOUT: u32 = 1;
const GBM_BO_USE_RENDERING: u32 = 4;
const DRM_MODE_CONNECTED: c_int = 1;

#[repr(C)]
struct DrmModeRes {
    count_fbs: c_int,
    fbs: *mut u32,
    count_crtcs: c_int,
    crtcs: *mut u32,
    count_connectors: c_int,
    connectors: *mut u32,
    count_encoders: c_int,
    encoders: *mut u32,
    min_width: u32,
    max_width: u32,
    min_height: u32,
    max_height: u32,
}

/// `drmModeModeInfo`.
#[repr(C)]
#[derive(Clone, Copy)]
struct DrmModeInfo {
    clock: u32,
    hdisplay: u16,
    hsync_start: u16,
    hsync_end: u16,
    htotal: u16,
    hskew: u16,
    vdisplay: u16,
    vsync_start: u16,
    vsync_end: u16,
    vtotal: u16,
    vscan: u16,
    vrefresh: u32,
    flags: u32,
    type_: u32,
    name: [c_char; 32],
}

#[repr(C)]
struct DrmModeConnector {
    connector_id: u32,
    encoder_id: u32,
    connector_type: u32,
    connector_type_id: u32,
    connection: c_int,
    mm_width: u32,
    mm_height: u32,
    subpixel: c_int,
    count_modes: c_int,
    modes: *mut DrmModeInfo,
    count_props: c_int,
    props: *mut u32,
    prop_values: *mut u64,
    count_encoders: c_int,
    encoders: *mut u32,
}

struct Drm {
    get_resources: unsafe extern "C" fn(c_int) -> *mut DrmModeRes,
    free_resources: unsafe extern "C" fn(*mut DrmModeRes),
    get_connector: unsafe extern "C" fn(c_int, u32) -> *mut DrmModeConnector,
    free_connector: unsafe extern "C" fn(*mut DrmModeConnector),
    add_fb: unsafe extern "C" fn(c_int, u32, u32, u8, u8, u32, u32, *mut u32) -> c_int,
    #[allow(clippy::type_complexity)]
    add_fb2: unsafe extern "C" fn(
        c_int,
        u32,
        u32,
        u32,
        *const u32,
        *const u32,
        *const u32,
        *mut u32,
        u32,
    ) -> c_int,
    prime_fd_to_handle: unsafe extern "C" fn(c_int, c_int, *mut u32) -> c_int,
    close_handle: unsafe extern "C" fn(c_int, u32) -> c_int,
    rm_fb: unsafe extern "C" fn(c_int, u32) -> c_int,
    set_crtc:
        unsafe extern "C" fn(c_int, u32, u32, u32, u32, *mut u32, c_int, *mut DrmModeInfo) -> c_int,
}

struct Gbm {
    create_device: unsafe extern "C" fn(c_int) -> *mut c_void,
    device_destroy: unsafe extern "C" fn(*mut c_void),
    surface_create: unsafe extern "C" fn(*mut c_void, u32, u32, u32, u32) -> *mut c_void,
    surface_destroy: unsafe extern "C" fn(*mut c_void),
    lock_front_buffer: unsafe extern "C" fn(*mut c_void) -> *mut c_void,
    release_buffer: unsafe extern "C" fn(*mut c_void, *mut c_void),
    bo_get_handle: unsafe extern "C" fn(*mut c_void) -> u64,
    bo_get_stride: unsafe extern "C" fn(*mut c_void) -> u32,
}

fn sym<T: Copy>(lib: &Library, name: &str) -> Result<T> {
    // SAFETY: the caller names the symbol's C type as T.
    let s = unsafe { lib.get::<T>(name.as_bytes()) }.with_context(|| format!("missing {name}"))?;
    Ok(*s)
}

/// What is on the CRTC: a framebuffer and what it was made from.
enum Shown {
    /// A locked front buffer of the GBM surface.
    GbmBuffer { fb: u32, bo: *mut c_void },
    /// An imported dma-buf's GEM handle.
    DmaBuf { fb: u32, handle: u32 },
}

/// The card, a connected connector with its preferred mode, and (with
/// [`Kms::open`]) a GBM surface of that size for EGL to render into.
pub struct Kms {
    drm: Drm,
    gbm: Gbm,
    card: OwnedFd,
    device: *mut c_void,
    surface: *mut c_void,
    connector: u32,
    crtc: u32,
    mode: DrmModeInfo,
    shown: Option<Shown>,
    pub width: u32,
    pub height: u32,
    _libs: (Library, Library),
}

impl Kms {
    /// Opens `card` (e.g. /dev/dri/card0) and prepares a GBM surface in the
    /// preferred mode of its first connected connector.
    pub fn open(card: &str) -> Result<Self> {
        Self::open_with(card, true)
    }

    /// Opens `card` without a GBM surface, for [`Kms::show_dmabuf`].
    pub fn open_without_gbm(card: &str) -> Result<Self> {
        Self::open_with(card, false)
    }

    fn open_with(card: &str, with_gbm: bool) -> Result<Self> {
        let card: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(card)
            .with_context(|| format!("cannot open {card}"))?
            .into();
        // SAFETY: loading libdrm and libgbm runs their initializers only.
        let (drm_lib, gbm_lib) = unsafe {
            (
                Library::new("libdrm.so.2").context("cannot load libdrm.so.2")?,
                Library::new("libgbm.so.1").context("cannot load libgbm.so.1")?,
            )
        };
        let drm = Drm {
            get_resources: sym(&drm_lib, "drmModeGetResources\0")?,
            free_resources: sym(&drm_lib, "drmModeFreeResources\0")?,
            get_connector: sym(&drm_lib, "drmModeGetConnector\0")?,
            free_connector: sym(&drm_lib, "drmModeFreeConnector\0")?,
            add_fb: sym(&drm_lib, "drmModeAddFB\0")?,
            add_fb2: sym(&drm_lib, "drmModeAddFB2\0")?,
            prime_fd_to_handle: sym(&drm_lib, "drmPrimeFDToHandle\0")?,
            close_handle: sym(&drm_lib, "drmCloseBufferHandle\0")?,
            rm_fb: sym(&drm_lib, "drmModeRmFB\0")?,
            set_crtc: sym(&drm_lib, "drmModeSetCrtc\0")?,
        };
        let gbm = Gbm {
            create_device: sym(&gbm_lib, "gbm_create_device\0")?,
            device_destroy: sym(&gbm_lib, "gbm_device_destroy\0")?,
            surface_create: sym(&gbm_lib, "gbm_surface_create\0")?,
            surface_destroy: sym(&gbm_lib, "gbm_surface_destroy\0")?,
            lock_front_buffer: sym(&gbm_lib, "gbm_surface_lock_front_buffer\0")?,
            release_buffer: sym(&gbm_lib, "gbm_surface_release_buffer\0")?,
            bo_get_handle: sym(&gbm_lib, "gbm_bo_get_handle\0")?,
            bo_get_stride: sym(&gbm_lib, "gbm_bo_get_stride\0")?,
        };
        let fd = card.as_raw_fd();
        // SAFETY: libdrm calls on an open card; every returned object is
        // checked for NULL, read within its counts and freed once.
        let (connector, crtc, mode) = unsafe {
            let res = (drm.get_resources)(fd);
            if res.is_null() {
                bail!("drmModeGetResources failed (not a KMS device?)");
            }
            let r = &*res;
            let crtc = (r.count_crtcs > 0).then(|| *r.crtcs);
            let mut found = None;
            for i in 0..r.count_connectors.max(0) as usize {
                let c = (drm.get_connector)(fd, *r.connectors.add(i));
                if c.is_null() {
                    continue;
                }
                let conn = &*c;
                if conn.connection == DRM_MODE_CONNECTED && conn.count_modes > 0 {
                    found = Some((conn.connector_id, *conn.modes));
                }
                (drm.free_connector)(c);
                if found.is_some() {
                    break;
                }
            }
            (drm.free_resources)(res);
            match (found, crtc) {
                (Some((connector, mode)), Some(crtc)) => (connector, crtc, mode),
                _ => bail!("no connected connector with a mode, or no CRTC"),
            }
        };
        let (width, height) = (u32::from(mode.hdisplay), u32::from(mode.vdisplay));
        let (device, surface) = if !with_gbm {
            (std::ptr::null_mut(), std::ptr::null_mut())
        } else {
            // SAFETY: GBM calls on the open card; the device and surface
            // are destroyed in Drop (or here on failure).
            unsafe {
                let device = (gbm.create_device)(fd);
                if device.is_null() {
                    bail!("gbm_create_device failed");
                }
                let surface = (gbm.surface_create)(
                    device,
                    width,
                    height,
                    FORMAT_XRGB8888,
                    GBM_BO_USE_SCANOUT | GBM_BO_USE_RENDERING,
                );
                if surface.is_null() {
                    (gbm.device_destroy)(device);
                    bail!("gbm_surface_create {width}x{height} failed");
                }
                (device, surface)
            }
        };
        Ok(Self {
            drm,
            gbm,
            card,
            device,
            surface,
            connector,
            crtc,
            mode,
            shown: None,
            width,
            height,
            _libs: (drm_lib, gbm_lib),
        })
    }

    /// The GBM device and surface, for EGL's GBM platform.
    pub fn gbm(&self) -> (*mut c_void, *mut c_void) {
        (self.device, self.surface)
    }

    /// Puts the surface's front buffer (after eglSwapBuffers) on the CRTC.
    pub fn show_front_buffer(&mut self) -> Result<()> {
        self.hide();
        if self.surface.is_null() {
            bail!("no GBM surface (opened without one)");
        }
        let fd = self.card.as_raw_fd();
        // SAFETY: GBM and libdrm calls on this card's objects; the buffer
        // stays locked (and the framebuffer alive) until Drop.
        unsafe {
            let bo = (self.gbm.lock_front_buffer)(self.surface);
            if bo.is_null() {
                bail!("gbm_surface_lock_front_buffer failed (no eglSwapBuffers?)");
            }
            let handle = (self.gbm.bo_get_handle)(bo) as u32;
            let stride = (self.gbm.bo_get_stride)(bo);
            let mut fb = 0u32;
            let rc =
                (self.drm.add_fb)(fd, self.width, self.height, 24, 32, stride, handle, &mut fb);
            if rc != 0 {
                (self.gbm.release_buffer)(self.surface, bo);
                bail!("drmModeAddFB failed ({rc})");
            }
            self.shown = Some(Shown::GbmBuffer { fb, bo });
            self.set_crtc(fb)
        }
    }

    /// Imports `dmabuf` (XRGB8888 at the mode's size, rows `pitch` bytes
    /// apart from `offset`) and puts it on the CRTC.
    pub fn show_dmabuf(&mut self, dmabuf: &OwnedFd, pitch: u32, offset: u32) -> Result<()> {
        self.hide();
        let fd = self.card.as_raw_fd();
        let mut handle = 0u32;
        // SAFETY: libdrm calls on this card with a live dma-buf fd; the
        // handle and framebuffer are released in hide().
        unsafe {
            let rc = (self.drm.prime_fd_to_handle)(fd, dmabuf.as_raw_fd(), &mut handle);
            if rc != 0 {
                bail!("drmPrimeFDToHandle failed ({rc})");
            }
            let handles = [handle, 0, 0, 0];
            let pitches = [pitch, 0, 0, 0];
            let offsets = [offset, 0, 0, 0];
            let mut fb = 0u32;
            let rc = (self.drm.add_fb2)(
                fd,
                self.width,
                self.height,
                FORMAT_XRGB8888,
                handles.as_ptr(),
                pitches.as_ptr(),
                offsets.as_ptr(),
                &mut fb,
                0,
            );
            if rc != 0 {
                (self.drm.close_handle)(fd, handle);
                bail!("drmModeAddFB2 failed ({rc})");
            }
            self.shown = Some(Shown::DmaBuf { fb, handle });
            self.set_crtc(fb)
        }
    }

    /// # Safety
    /// `fb` is a framebuffer of this card.
    unsafe fn set_crtc(&mut self, fb: u32) -> Result<()> {
        let mut connector = self.connector;
        // SAFETY: this card's CRTC, connector and mode; `fb` per the caller.
        let rc = unsafe {
            (self.drm.set_crtc)(
                self.card.as_raw_fd(),
                self.crtc,
                fb,
                0,
                0,
                &mut connector,
                1,
                &mut self.mode,
            )
        };
        if rc != 0 {
            bail!("drmModeSetCrtc failed ({rc}): is another program the DRM master?");
        }
        Ok(())
    }

    /// Takes the buffer off the display (the CRTC goes dark) and gives it
    /// back to the surface. Must happen before the EGL surface is
    /// destroyed, which frees the surface's buffers.
    pub fn hide(&mut self) {
        let fd = self.card.as_raw_fd();
        match self.shown.take() {
            // SAFETY: this card's framebuffer and this surface's locked
            // buffer, released once.
            Some(Shown::GbmBuffer { fb, bo }) => unsafe {
                (self.drm.rm_fb)(fd, fb);
                (self.gbm.release_buffer)(self.surface, bo);
            },
            // SAFETY: this card's framebuffer and GEM handle, released once.
            Some(Shown::DmaBuf { fb, handle }) => unsafe {
                (self.drm.rm_fb)(fd, fb);
                (self.drm.close_handle)(fd, handle);
            },
            None => {}
        }
    }
}

impl Drop for Kms {
    fn drop(&mut self) {
        self.hide();
        // SAFETY: this card's surface and device, destroyed once, the
        // surface before its device (EGL is done with both).
        unsafe {
            if !self.surface.is_null() {
                (self.gbm.surface_destroy)(self.surface);
            }
            if !self.device.is_null() {
                (self.gbm.device_destroy)(self.device);
            }
        }
    }
}
