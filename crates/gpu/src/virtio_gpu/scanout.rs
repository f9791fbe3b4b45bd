//! Scanouts and the cursor: what each display shows, pushed to the
//! [`ScanoutSink`].
//!
//! - [`DisplayControl`]: the displays' preferred modes (GET_DISPLAY_INFO,
//!   GET_EDID), shared between the device, its worker and whoever resizes a
//!   display (a window or viewer): [`DisplayControl::resize`] changes a mode,
//!   sets VIRTIO_GPU_EVENT_DISPLAY in the config space and sends a config
//!   interrupt, and the guest's driver fetches the display info again. It
//!   is the display side's [`ResizeSink`]: a window or web viewer asks
//!   through `pv_display::Display::request_size`.
//! - [`Scanouts`]: which resource rectangle each scanout shows (SET_SCANOUT),
//!   the frames and damage sent to the sink on RESOURCE_FLUSH, and cursor
//!   images converted to straight RGBA.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use pv_devices::virtio::{Interrupt, InterruptKind};
use pv_display::{CursorImage, FrameView, PixelFormat, Rect, ResizeSink, ScanoutSink};

use super::backend::{ResourceInfo, ResourceView};
use super::metrics::{add, GpuMetrics};
use super::params::{check_mode, GpuParams, ParamsError};
use super::protocol::{
    CursorPos, DisplayOne, EVENT_DISPLAY, RESP_ERR_INVALID_PARAMETER, RESP_ERR_INVALID_SCANOUT_ID,
};

/// Largest cursor image, in pixels a side.
pub const MAX_CURSOR_SIZE: u32 = 64;

/// Errors of scanout and cursor commands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanoutError {
    #[error("no scanout {0}")]
    InvalidScanout(u32),
    #[error("scanout rectangle {rect:?} is empty or outside the {width}x{height} resource")]
    BadRect { rect: Rect, width: u32, height: u32 },
    #[error("cursor of {width}x{height} is larger than 64x64")]
    CursorTooLarge { width: u32, height: u32 },
}

impl ScanoutError {
    /// The response type the driver gets for this error.
    pub fn response_type(&self) -> u32 {
        match self {
            Self::InvalidScanout(_) => RESP_ERR_INVALID_SCANOUT_ID,
            Self::BadRect { .. } | Self::CursorTooLarge { .. } => RESP_ERR_INVALID_PARAMETER,
        }
    }
}

/// Why a resize was refused.
#[derive(Debug, thiserror::Error)]
pub enum ResizeError {
    #[error("no display {0}")]
    NoDisplay(u32),
    #[error("invalid display size")]
    Mode(#[source] ParamsError),
}

struct DisplayState {
    modes: Mutex<Vec<(u32, u32)>>,
    events: AtomicU32,
    interrupt: Mutex<Option<Arc<dyn Interrupt>>>,
}

/// The displays' modes and config events, shared (cheap to clone).
#[derive(Clone)]
pub struct DisplayControl {
    state: Arc<DisplayState>,
}

impl std::fmt::Debug for DisplayControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DisplayControl")
            .field("modes", &*self.modes_locked())
            .field("events", &self.events())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl DisplayControl {
    /// `params.displays` displays of `params.width` x `params.height`.
    pub fn new(params: &GpuParams) -> Self {
        let n = params.displays as usize;
        Self {
            state: Arc::new(DisplayState {
                modes: Mutex::new(vec![(params.width, params.height); n]),
                events: AtomicU32::new(0),
                interrupt: Mutex::new(None),
            }),
        }
    }

    fn modes_locked(&self) -> MutexGuard<'_, Vec<(u32, u32)>> {
        lock(&self.state.modes)
    }

    /// Number of scanouts.
    pub fn num_scanouts(&self) -> u32 {
        self.modes_locked().len() as u32
    }

    /// The preferred mode of every scanout.
    pub fn modes(&self) -> Vec<(u32, u32)> {
        self.modes_locked().clone()
    }

    /// The preferred mode of scanout `scanout`.
    pub fn mode(&self, scanout: u32) -> Option<(u32, u32)> {
        self.modes_locked().get(scanout as usize).copied()
    }

    /// GET_DISPLAY_INFO's entries: every scanout enabled at its mode.
    pub fn display_info(&self) -> Vec<DisplayOne> {
        self.modes_locked()
            .iter()
            .map(|&(w, h)| DisplayOne {
                rect: Rect::new(0, 0, w, h),
                enabled: true,
            })
            .collect()
    }

    /// Asks the guest to use `width` x `height` on display `scanout`: sets
    /// the mode, raises VIRTIO_GPU_EVENT_DISPLAY and interrupts the driver
    /// when the device runs. The guest answers with GET_DISPLAY_INFO and a
    /// new SET_SCANOUT, which reaches the sink as `set_mode`. Asking for the
    /// current mode does nothing.
    pub fn resize(&self, scanout: u32, width: u32, height: u32) -> Result<(), ResizeError> {
        check_mode(width, height).map_err(ResizeError::Mode)?;
        {
            let mut modes = self.modes_locked();
            let mode = modes
                .get_mut(scanout as usize)
                .ok_or(ResizeError::NoDisplay(scanout))?;
            if *mode == (width, height) {
                return Ok(());
            }
            *mode = (width, height);
        }
        self.state.events.fetch_or(EVENT_DISPLAY, Ordering::SeqCst);
        if let Some(interrupt) = lock(&self.state.interrupt).as_ref() {
            interrupt.trigger(InterruptKind::Config);
        }
        log::info!("virtio-gpu: display {scanout} resized to {width}x{height}");
        Ok(())
    }

    /// The config space's `events_read`.
    pub fn events(&self) -> u32 {
        self.state.events.load(Ordering::SeqCst)
    }

    /// A driver write of `bits` to `events_clear`.
    pub fn clear_events(&self, bits: u32) {
        self.state.events.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The interrupt used for config events (None while the device is
    /// stopped; clearing it also clears pending events).
    pub fn set_interrupt(&self, interrupt: Option<Arc<dyn Interrupt>>) {
        if interrupt.is_none() {
            self.state.events.store(0, Ordering::SeqCst);
        }
        *lock(&self.state.interrupt) = interrupt;
    }
}

/// A viewer's or window's size request ([`DisplayControl::resize`]), with
/// the reason as text when refused.
impl ResizeSink for DisplayControl {
    fn request_size(&self, scanout: u32, width: u32, height: u32) -> Result<(), String> {
        self.resize(scanout, width, height)
            .map_err(|e| match std::error::Error::source(&e) {
                Some(source) => format!("{e}: {source}"),
                None => e.to_string(),
            })
    }
}

/// What one scanout shows.
#[derive(Debug, Clone, Copy, Default)]
struct Scanout {
    /// 0: disabled.
    resource_id: u32,
    /// The shown rectangle of the resource.
    rect: Rect,
    /// The mode last sent to the sink.
    reported: Option<(u32, u32)>,
}

/// The scanouts' state and the sink they feed.
pub struct Scanouts {
    scanouts: Vec<Scanout>,
    sink: Arc<dyn ScanoutSink>,
}

impl Scanouts {
    /// `n` disabled scanouts feeding `sink`.
    pub fn new(n: u32, sink: Arc<dyn ScanoutSink>) -> Self {
        Self {
            scanouts: vec![Scanout::default(); n as usize],
            sink,
        }
    }

    /// Number of scanouts.
    pub fn len(&self) -> u32 {
        self.scanouts.len() as u32
    }

    /// Whether there are no scanouts.
    pub fn is_empty(&self) -> bool {
        self.scanouts.is_empty()
    }

    /// Checks a scanout id.
    pub fn check(&self, scanout_id: u32) -> Result<usize, ScanoutError> {
        let i = scanout_id as usize;
        if i < self.scanouts.len() {
            Ok(i)
        } else {
            Err(ScanoutError::InvalidScanout(scanout_id))
        }
    }

    /// The resource scanout `scanout_id` shows (0: disabled).
    pub fn resource(&self, scanout_id: u32) -> Option<u32> {
        self.scanouts
            .get(scanout_id as usize)
            .map(|s| s.resource_id)
    }

    /// Whether any scanout shows `resource_id`.
    pub fn shows(&self, resource_id: u32) -> bool {
        self.scanouts.iter().any(|s| s.resource_id == resource_id)
    }

    /// SET_SCANOUT: shows `rect` of `resource` (id and info) on the scanout,
    /// or disables it (None). The sink hears of mode changes.
    pub fn set(
        &mut self,
        scanout_id: u32,
        resource: Option<(u32, ResourceInfo)>,
        rect: Rect,
    ) -> Result<(), ScanoutError> {
        let i = self.check(scanout_id)?;
        let Some((resource_id, info)) = resource else {
            self.disable(i);
            return Ok(());
        };
        let within = |start: u32, len: u32, limit: u32| {
            len > 0 && start.checked_add(len).is_some_and(|e| e <= limit)
        };
        if !within(rect.x, rect.width, info.width) || !within(rect.y, rect.height, info.height) {
            return Err(ScanoutError::BadRect {
                rect,
                width: info.width,
                height: info.height,
            });
        }
        let s = &mut self.scanouts[i];
        s.resource_id = resource_id;
        s.rect = rect;
        let mode = Some((rect.width, rect.height));
        if s.reported != mode {
            s.reported = mode;
            self.sink.set_mode(scanout_id, mode);
        }
        Ok(())
    }

    fn disable(&mut self, i: usize) {
        let s = &mut self.scanouts[i];
        s.resource_id = 0;
        s.rect = Rect::default();
        if s.reported.take().is_some() {
            self.sink.set_mode(i as u32, None);
        }
    }

    /// Disables every scanout showing `resource_id` (it is going away).
    pub fn disable_resource(&mut self, resource_id: u32) {
        for i in 0..self.scanouts.len() {
            if self.scanouts[i].resource_id == resource_id {
                self.disable(i);
            }
        }
    }

    /// Disables every scanout and hides their cursors (device reset).
    pub fn disable_all(&mut self) {
        for i in 0..self.scanouts.len() {
            self.sink.set_cursor(i as u32, None);
            self.disable(i);
        }
    }

    /// RESOURCE_FLUSH: sends every scanout showing `resource_id` its frame,
    /// with `rect` (resource coordinates) clipped to what the scanout shows
    /// as damage in scanout coordinates. Returns the scanouts updated.
    pub fn flush(
        &self,
        resource_id: u32,
        rect: Rect,
        view: &ResourceView<'_>,
        metrics: &GpuMetrics,
    ) -> u32 {
        let mut updated = 0;
        for (i, s) in self.scanouts.iter().enumerate() {
            if resource_id == 0 || s.resource_id != resource_id {
                continue;
            }
            let Some(clip) = intersect(rect, s.rect) else {
                continue;
            };
            let damage = Rect::new(
                clip.x - s.rect.x,
                clip.y - s.rect.y,
                clip.width,
                clip.height,
            );
            let Some(data) = frame_bytes(view, s.rect) else {
                log::debug!("virtio-gpu: scanout {i} rectangle outside resource {resource_id}");
                continue;
            };
            let frame = FrameView {
                width: s.rect.width,
                height: s.rect.height,
                stride: view.stride,
                format: view.info.format,
                data,
            };
            self.sink.update(i as u32, &frame, damage);
            add(&metrics.flushes[i], 1);
            updated += 1;
        }
        updated
    }

    /// UPDATE_CURSOR: a new image (None hides it) and position.
    pub fn update_cursor(
        &self,
        pos: CursorPos,
        image: Option<&CursorImage>,
    ) -> Result<(), ScanoutError> {
        self.check(pos.scanout_id)?;
        self.sink.set_cursor(pos.scanout_id, image);
        self.sink.move_cursor(pos.scanout_id, pos.x, pos.y);
        Ok(())
    }

    /// MOVE_CURSOR.
    pub fn move_cursor(&self, pos: CursorPos) -> Result<(), ScanoutError> {
        self.check(pos.scanout_id)?;
        self.sink.move_cursor(pos.scanout_id, pos.x, pos.y);
        Ok(())
    }
}

/// The bytes of `view` covering `rect` (which starts the slice; rows keep
/// the resource's stride).
fn frame_bytes<'a>(view: &ResourceView<'a>, rect: Rect) -> Option<&'a [u8]> {
    if rect.is_empty() {
        return None;
    }
    let stride = u64::from(view.stride);
    let start = u64::from(rect.y) * stride + u64::from(rect.x) * 4;
    let end = start + (u64::from(rect.height) - 1) * stride + u64::from(rect.width) * 4;
    view.data
        .get(usize::try_from(start).ok()?..usize::try_from(end).ok()?)
}

/// The overlap of two rectangles, None when they don't overlap.
pub fn intersect(a: Rect, b: Rect) -> Option<Rect> {
    let end = |start: u32, len: u32| u64::from(start) + u64::from(len);
    let x0 = a.x.max(b.x);
    let y0 = a.y.max(b.y);
    let x1 = end(a.x, a.width).min(end(b.x, b.width));
    let y1 = end(a.y, a.height).min(end(b.y, b.height));
    if x1 <= u64::from(x0) || y1 <= u64::from(y0) {
        return None;
    }
    // The overlap lies within `b`, whose sides fit u32.
    Some(Rect::new(
        x0,
        y0,
        (x1 - u64::from(x0)) as u32,
        (y1 - u64::from(y0)) as u32,
    ))
}

/// A cursor resource as straight RGBA with its hot spot (clamped into the
/// image). Formats with alpha are taken as premultiplied, DRM's default
/// blending for cursor planes, and un-premultiplied; formats without alpha
/// are opaque.
pub fn cursor_image(
    view: &ResourceView<'_>,
    hot_x: u32,
    hot_y: u32,
) -> Result<CursorImage, ScanoutError> {
    let ResourceInfo {
        width,
        height,
        format,
    } = view.info;
    if width > MAX_CURSOR_SIZE || height > MAX_CURSOR_SIZE {
        return Err(ScanoutError::CursorTooLarge { width, height });
    }
    let mut rgba = Vec::with_capacity((width * height * 4) as usize);
    for y in 0..height as usize {
        let row = y * view.stride as usize;
        for x in 0..width as usize {
            let i = row + x * 4;
            let px: [u8; 4] = view
                .data
                .get(i..i + 4)
                .and_then(|p| p.try_into().ok())
                .unwrap_or_default();
            rgba.extend_from_slice(&to_rgba(format, px));
        }
    }
    Ok(CursorImage {
        width,
        height,
        hot_x: hot_x.min(width.saturating_sub(1)),
        hot_y: hot_y.min(height.saturating_sub(1)),
        rgba,
    })
}

/// One pixel of `format` (bytes in memory order) as straight RGBA.
pub fn to_rgba(format: PixelFormat, p: [u8; 4]) -> [u8; 4] {
    let [r, g, b, a] = match format {
        PixelFormat::B8G8R8A8 => [p[2], p[1], p[0], p[3]],
        PixelFormat::B8G8R8X8 => [p[2], p[1], p[0], 255],
        PixelFormat::A8R8G8B8 => [p[1], p[2], p[3], p[0]],
        PixelFormat::X8R8G8B8 => [p[1], p[2], p[3], 255],
        PixelFormat::R8G8B8A8 => [p[0], p[1], p[2], p[3]],
        PixelFormat::X8B8G8R8 => [p[3], p[2], p[1], 255],
        PixelFormat::A8B8G8R8 => [p[3], p[2], p[1], p[0]],
        PixelFormat::R8G8B8X8 => [p[0], p[1], p[2], 255],
    };
    if a == 0 || a == 255 {
        return if a == 0 { [0, 0, 0, 0] } else { [r, g, b, a] };
    }
    let un = |c: u8| ((u32::from(c) * 255 + u32::from(a) / 2) / u32::from(a)).min(255) as u8;
    [un(r), un(g), un(b), a]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[derive(Default)]
    struct ConfigInterrupts(AtomicU64);

    impl Interrupt for ConfigInterrupts {
        fn trigger(&self, kind: InterruptKind) {
            if kind == InterruptKind::Config {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    #[test]
    fn display_control_is_the_displays_resize_sink() {
        let control = DisplayControl::new(&GpuParams {
            width: 1024,
            height: 768,
            displays: 2,
            ..GpuParams::default()
        });
        let interrupts = Arc::new(ConfigInterrupts::default());
        control.set_interrupt(Some(interrupts.clone()));
        // The display store asks through the trait, as a window would.
        let display = pv_display::Display::new(2);
        display.connect_resizer(Some(Arc::new(control.clone())));
        display.request_size(1, 1920, 1080).unwrap();
        assert_eq!(control.events(), EVENT_DISPLAY);
        assert_eq!(interrupts.0.load(Ordering::SeqCst), 1);
        // GET_DISPLAY_INFO answers the new mode.
        let info = control.display_info();
        assert_eq!(info[0].rect, Rect::new(0, 0, 1024, 768));
        assert_eq!(info[1].rect, Rect::new(0, 0, 1920, 1080));
        assert!(info[1].enabled);
        // The same size again: no new event.
        control.clear_events(EVENT_DISPLAY);
        display.request_size(1, 1920, 1080).unwrap();
        assert_eq!(control.events(), 0);
        assert_eq!(interrupts.0.load(Ordering::SeqCst), 1);

        // Refusals come back as text.
        let sink: &dyn ResizeSink = &control;
        assert_eq!(sink.request_size(2, 800, 600).unwrap_err(), "no display 2");
        let err = sink.request_size(0, 8, 600).unwrap_err();
        assert!(err.starts_with("invalid display size: "), "{err}");
        assert_eq!(control.mode(0), Some((1024, 768)));
        assert_eq!(control.events(), 0);
        assert_eq!(interrupts.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn intersections() {
        let r = Rect::new;
        assert_eq!(
            intersect(r(0, 0, 10, 10), r(5, 5, 10, 10)),
            Some(r(5, 5, 5, 5))
        );
        assert_eq!(intersect(r(0, 0, 10, 10), r(10, 0, 10, 10)), None);
        assert_eq!(intersect(r(0, 0, 0, 10), r(0, 0, 10, 10)), None);
        assert_eq!(
            intersect(r(u32::MAX, u32::MAX, u32::MAX, u32::MAX), r(0, 0, 10, 10)),
            None
        );
        assert_eq!(
            intersect(r(2, 3, u32::MAX, u32::MAX), r(0, 0, 10, 10)),
            Some(r(2, 3, 8, 7))
        );
    }

    #[test]
    fn pixels_to_rgba() {
        use PixelFormat::*;
        let cases = [
            (B8G8R8A8, [3, 2, 1, 255], [1, 2, 3, 255]),
            (B8G8R8X8, [3, 2, 1, 0], [1, 2, 3, 255]),
            (A8R8G8B8, [255, 1, 2, 3], [1, 2, 3, 255]),
            (X8R8G8B8, [9, 1, 2, 3], [1, 2, 3, 255]),
            (R8G8B8A8, [1, 2, 3, 255], [1, 2, 3, 255]),
            (X8B8G8R8, [9, 3, 2, 1], [1, 2, 3, 255]),
            (A8B8G8R8, [255, 3, 2, 1], [1, 2, 3, 255]),
            (R8G8B8X8, [1, 2, 3, 0], [1, 2, 3, 255]),
            // Premultiplied half-transparent white and red; transparent.
            (B8G8R8A8, [128, 128, 128, 128], [255, 255, 255, 128]),
            (R8G8B8A8, [64, 0, 0, 128], [128, 0, 0, 128]),
            (B8G8R8A8, [9, 9, 9, 0], [0, 0, 0, 0]),
            // Inconsistent premultiplication saturates.
            (R8G8B8A8, [200, 0, 0, 100], [255, 0, 0, 100]),
        ];
        for (f, px, want) in cases {
            assert_eq!(to_rgba(f, px), want, "{f:?} {px:?}");
        }
    }
}
