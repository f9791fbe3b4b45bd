//! pv-display: where the guest's screens go.
//!
//! The virtio-gpu device (pv-gpu) pushes what the guest shows through the
//! [`ScanoutSink`] trait: a mode per scanout, damaged rectangles of frames,
//! and the cursor. Sinks keep what they need: the headless store keeps the
//! latest frame of each scanout for screenshots; the web viewer and the
//! window show it live. Keyboard and mouse come back through [`InputSink`]
//! (implemented by the virtio-input devices), and requests for a new display
//! size go to the guest through [`ResizeSink`] (the virtio-gpu device).
//!
//! Everything here is independent of KVM and of virtio: frames are plain
//! pixel buffers.

/// A rectangle in scanout coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl Rect {
    pub fn new(x: u32, y: u32, width: u32, height: u32) -> Self {
        Self {
            x,
            y,
            width,
            height,
        }
    }

    /// Whether the rectangle covers no pixel.
    pub fn is_empty(&self) -> bool {
        self.width == 0 || self.height == 0
    }
}

/// Pixel layouts, named by their byte order in memory (B8G8R8A8: byte 0 is
/// blue). These are the virtio-gpu 2D formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PixelFormat {
    B8G8R8A8,
    B8G8R8X8,
    A8R8G8B8,
    X8R8G8B8,
    R8G8B8A8,
    X8B8G8R8,
    A8B8G8R8,
    R8G8B8X8,
}

impl PixelFormat {
    /// Bytes per pixel (all formats are 32-bit).
    pub const fn bytes_per_pixel(self) -> u32 {
        4
    }

    /// Whether the alpha byte is meaningful.
    pub const fn has_alpha(self) -> bool {
        matches!(
            self,
            PixelFormat::B8G8R8A8
                | PixelFormat::A8R8G8B8
                | PixelFormat::R8G8B8A8
                | PixelFormat::A8B8G8R8
        )
    }
}

/// A borrowed frame: `height` rows of `stride` bytes, `width` pixels used.
#[derive(Debug, Clone, Copy)]
pub struct FrameView<'a> {
    pub width: u32,
    pub height: u32,
    pub stride: u32,
    pub format: PixelFormat,
    pub data: &'a [u8],
}

/// A cursor image in straight (non-premultiplied) RGBA8, with its hot spot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorImage {
    pub width: u32,
    pub height: u32,
    pub hot_x: u32,
    pub hot_y: u32,
    pub rgba: Vec<u8>,
}

/// Receives what the guest shows. Called from the GPU device's worker
/// thread: implementations copy what they need and return quickly.
pub trait ScanoutSink: Send + Sync {
    /// Scanout `scanout` now shows `width` x `height` pixels, or (None) is off.
    fn set_mode(&self, scanout: u32, mode: Option<(u32, u32)>);
    /// `damage` of scanout `scanout` changed; `frame` is the whole scanout
    /// image (its size equals the mode's), of which only the `damage`
    /// rectangle is sure to be current (a 3D scanout reads back only what
    /// the guest flushed).
    fn update(&self, scanout: u32, frame: &FrameView<'_>, damage: Rect);
    /// A new cursor image for `scanout` (None hides the cursor).
    fn set_cursor(&self, scanout: u32, image: Option<&CursorImage>);
    /// The cursor's position (of its hot spot) on `scanout`.
    fn move_cursor(&self, scanout: u32, x: i32, y: i32);
}

/// Keyboard and pointer input for the guest, from a viewer or window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum InputEvent {
    /// A key, as a Linux input event code (`KEY_A` = 30, ...).
    Key { code: u16, pressed: bool },
    /// Absolute pointer position on `scanout`, in scanout pixels.
    PointerMove { scanout: u32, x: u32, y: u32 },
    /// A pointer button, as a Linux code (`BTN_LEFT` = 0x110, ...).
    Button { code: u16, pressed: bool },
    /// Wheel steps (positive: away from the user).
    Wheel { delta: i32 },
}

/// Delivers input to the guest (the virtio-input devices).
pub trait InputSink: Send + Sync {
    fn send(&self, event: InputEvent);
}

/// Asks the guest for a new display size (implemented by the virtio-gpu
/// device's display control). A viewer or window that wants the guest's
/// screen to follow its size calls it through [`Display::request_size`];
/// the guest switches when its driver reads the new mode, and the new mode
/// then arrives through [`ScanoutSink::set_mode`] like any other.
pub trait ResizeSink: Send + Sync {
    /// Asks for `width` x `height` on `scanout`; the error says why not
    /// (no such scanout, a size the device does not take).
    fn request_size(&self, scanout: u32, width: u32, height: u32) -> Result<(), String>;
}

pub mod compose;
pub mod convert;
pub mod damage;
pub mod encode;
mod error;
pub mod keymap;
pub mod store;
pub mod web;
#[cfg(feature = "window")]
pub mod window;

pub use error::DisplayError;
pub use store::{Display, Frame, ScanoutInfo, Subscription, Update};
pub use web::WebViewer;
#[cfg(feature = "window")]
pub use window::WindowViewer;
