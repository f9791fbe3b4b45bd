//! [`Display`]: the headless store. It implements [`ScanoutSink`] and
//! keeps, per scanout, the mode, the latest frame (RGBA8, opaque), the
//! cursor image and its position. Screenshots come from here, and the live
//! sinks (the web viewer, the window) subscribe to it: each
//! [`Subscription`] accumulates damage until its owner fetches
//! [`Update`]s, so a slow viewer skips frames instead of queueing them.
//!
//! Bounds: at most [`MAX_SCANOUTS`] scanouts, modes up to
//! [`MAX_DIMENSION`] on a side and [`MAX_TOTAL_PIXELS`] over all scanouts
//! together, cursors up to [`MAX_CURSOR_DIMENSION`] on a side; anything
//! larger is refused with a warning and leaves the scanout as it was.
//!
//! Resizing: [`Display::request_size`] passes a viewer's wish for a new
//! size to the [`ResizeSink`] connected with [`Display::connect_resizer`]
//! (the running machine's GPU); the store's mode changes only when the guest
//! switches.
//!
//! Locks: one per scanout (the GPU worker updating scanout 0 does not wait
//! for a viewer reading scanout 1), one for the subscriber list, one per
//! subscriber's pending changes; a scanout's lock is never held while
//! taking a subscriber's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use crate::compose::composite_cursor;
use crate::convert::row_to_rgba;
use crate::damage::{clip, DamageSet};
use crate::encode::png_from_rgba;
use crate::{CursorImage, DisplayError, FrameView, Rect, ResizeSink, ScanoutSink};

/// The most scanouts a display has (virtio-gpu's limit).
pub const MAX_SCANOUTS: u32 = 16;
/// The largest width or height of a mode.
pub const MAX_DIMENSION: u32 = 16384;
/// The most pixels all scanouts hold together (1 GiB of RGBA8).
pub const MAX_TOTAL_PIXELS: u64 = 16384 * 16384;
/// The largest width or height of a cursor image.
pub const MAX_CURSOR_DIMENSION: u32 = 512;
/// The smallest width or height [`Display::request_size`] asks for.
pub const MIN_REQUEST_DIMENSION: u32 = 32;
/// The largest width or height [`Display::request_size`] asks for.
pub const MAX_REQUEST_DIMENSION: u32 = 8192;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What [`Display::scanouts`] reports for each scanout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ScanoutInfo {
    pub id: u32,
    /// The mode's size (0 x 0 while the scanout is off).
    pub width: u32,
    pub height: u32,
    pub enabled: bool,
    /// Updates received since the display was created.
    pub frames: u64,
}

/// A copy of a scanout's image: `width` x `height` RGBA8 pixels, rows
/// tightly packed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub width: u32,
    pub height: u32,
    pub rgba: Vec<u8>,
}

/// A change a subscriber is told about, with what it needs to show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// The scanout's mode (None: off). Pixels of the whole frame follow
    /// when the scanout shows something.
    Mode {
        scanout: u32,
        mode: Option<(u32, u32)>,
    },
    /// New pixels of `rect`: RGBA8, `rect.width * 4` bytes a row.
    Pixels {
        scanout: u32,
        rect: Rect,
        rgba: Vec<u8>,
    },
    /// A new cursor image (None: hidden).
    Cursor {
        scanout: u32,
        image: Option<CursorImage>,
    },
    /// The cursor's hot spot moved.
    CursorMove { scanout: u32, x: i32, y: i32 },
}

struct Scanout {
    mode: Option<(u32, u32)>,
    /// RGBA8, mode width x height, empty while off.
    fb: Vec<u8>,
    /// Whether an update arrived since the mode was set.
    shown: bool,
    frames: u64,
    cursor: Option<CursorImage>,
    cursor_pos: (i32, i32),
}

impl Scanout {
    fn new() -> Self {
        Self {
            mode: None,
            fb: Vec::new(),
            shown: false,
            frames: 0,
            cursor: None,
            cursor_pos: (0, 0),
        }
    }

    /// A copy of `rect` (inside the mode) of the framebuffer.
    fn read(&self, rect: Rect) -> Vec<u8> {
        let Some((w, _)) = self.mode else {
            return Vec::new();
        };
        let row_bytes = rect.width as usize * 4;
        let mut out = Vec::with_capacity(row_bytes * rect.height as usize);
        for y in rect.y..rect.y + rect.height {
            let start = (y as usize * w as usize + rect.x as usize) * 4;
            out.extend_from_slice(&self.fb[start..start + row_bytes]);
        }
        out
    }
}

/// What a subscriber has not fetched yet, for one scanout.
#[derive(Debug, Clone, Default)]
struct Pending {
    mode: bool,
    damage: DamageSet,
    cursor_image: bool,
    cursor_pos: bool,
}

impl Pending {
    fn is_empty(&self) -> bool {
        !self.mode && self.damage.is_empty() && !self.cursor_image && !self.cursor_pos
    }

    fn everything() -> Self {
        Self {
            mode: true,
            damage: DamageSet::new(),
            cursor_image: true,
            cursor_pos: true,
        }
    }
}

struct Shared {
    pending: Mutex<Vec<Pending>>,
    wake: Box<dyn Fn() + Send + Sync>,
}

/// A live sink's view of a [`Display`]: changes accumulate here until
/// [`Display::updates`] fetches them. Dropping it unsubscribes.
pub struct Subscription {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

/// The headless store of a VM's scanouts.
pub struct Display {
    scanouts: Vec<Mutex<Scanout>>,
    pixel_budget: u64,
    pixels_held: AtomicU64,
    subscribers: Mutex<Vec<Weak<Shared>>>,
    resizer: Mutex<Option<Arc<dyn ResizeSink>>>,
}

impl std::fmt::Debug for Display {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Display")
            .field("scanouts", &self.scanouts())
            .finish_non_exhaustive()
    }
}

impl Display {
    /// A display with `count` scanouts (at most [`MAX_SCANOUTS`]), all off.
    pub fn new(count: u32) -> Self {
        Self::with_pixel_budget(count, MAX_TOTAL_PIXELS)
    }

    /// A display whose scanouts hold at most `pixels` pixels together
    /// (capped at [`MAX_TOTAL_PIXELS`]).
    pub fn with_pixel_budget(count: u32, pixels: u64) -> Self {
        if count > MAX_SCANOUTS {
            log::warn!("display: {count} scanouts asked for, keeping {MAX_SCANOUTS}");
        }
        let count = count.min(MAX_SCANOUTS);
        Self {
            scanouts: (0..count).map(|_| Mutex::new(Scanout::new())).collect(),
            pixel_budget: pixels.min(MAX_TOTAL_PIXELS),
            pixels_held: AtomicU64::new(0),
            subscribers: Mutex::new(Vec::new()),
            resizer: Mutex::new(None),
        }
    }

    /// How many scanouts the display has.
    pub fn count(&self) -> u32 {
        self.scanouts.len() as u32
    }

    fn scanout(&self, index: u32) -> Result<&Mutex<Scanout>, DisplayError> {
        self.scanouts
            .get(index as usize)
            .ok_or(DisplayError::NoSuchDisplay {
                index,
                count: self.count(),
            })
    }

    /// Every scanout's id, size and state.
    pub fn scanouts(&self) -> Vec<ScanoutInfo> {
        self.scanouts
            .iter()
            .enumerate()
            .map(|(id, s)| {
                let s = lock(s);
                let (width, height) = s.mode.unwrap_or((0, 0));
                ScanoutInfo {
                    id: id as u32,
                    width,
                    height,
                    enabled: s.mode.is_some(),
                    frames: s.frames,
                }
            })
            .collect()
    }

    /// The mode of `scanout` (None: off or no such scanout).
    pub fn mode(&self, scanout: u32) -> Option<(u32, u32)> {
        self.scanout(scanout).ok().and_then(|s| lock(s).mode)
    }

    /// The latest frame of `scanout`, without the cursor.
    pub fn frame(&self, scanout: u32) -> Result<Frame, DisplayError> {
        let s = lock(self.scanout(scanout)?);
        match s.mode {
            Some((width, height)) if s.shown => Ok(Frame {
                width,
                height,
                rgba: s.fb.clone(),
            }),
            _ => Err(DisplayError::NothingShown(scanout)),
        }
    }

    /// The latest frame of `scanout` with the cursor composited on top.
    pub fn composited_frame(&self, scanout: u32) -> Result<Frame, DisplayError> {
        let (mut frame, cursor, (x, y)) = {
            let s = lock(self.scanout(scanout)?);
            match s.mode {
                Some((width, height)) if s.shown => (
                    Frame {
                        width,
                        height,
                        rgba: s.fb.clone(),
                    },
                    s.cursor.clone(),
                    s.cursor_pos,
                ),
                _ => return Err(DisplayError::NothingShown(scanout)),
            }
        };
        if let Some(c) = cursor {
            composite_cursor(&mut frame.rgba, frame.width, frame.height, &c, x, y);
        }
        Ok(frame)
    }

    /// A PNG (8-bit RGB) of the latest frame of `scanout`, cursor included.
    pub fn screenshot(&self, scanout: u32) -> Result<Vec<u8>, DisplayError> {
        let frame = self.composited_frame(scanout)?;
        png_from_rgba(frame.width, frame.height, &frame.rgba)
    }

    /// Connects the GPU that [`Display::request_size`] asks (None
    /// disconnects it: the machine is gone). A machine connects its GPU when
    /// it is built, so after a reboot requests go to the new one.
    pub fn connect_resizer(&self, resizer: Option<Arc<dyn ResizeSink>>) {
        *lock(&self.resizer) = resizer;
    }

    /// Disconnects `resizer` if it is the one connected (a machine going
    /// away leaves its successor's GPU connected).
    pub fn disconnect_resizer(&self, resizer: &Arc<dyn ResizeSink>) {
        let mut connected = lock(&self.resizer);
        if connected.as_ref().is_some_and(|r| Arc::ptr_eq(r, resizer)) {
            *connected = None;
        }
    }

    /// Whether a GPU is connected to take size requests.
    pub fn has_resizer(&self) -> bool {
        lock(&self.resizer).is_some()
    }

    /// Asks the guest to show `width` x `height` on `scanout` (a window or
    /// viewer the user resized). Each side must be within
    /// [`MIN_REQUEST_DIMENSION`]..=[`MAX_REQUEST_DIMENSION`]. The mode here
    /// changes only once the guest switches (`set_mode` from the GPU).
    pub fn request_size(&self, scanout: u32, width: u32, height: u32) -> Result<(), DisplayError> {
        self.scanout(scanout)?;
        let ok = |v: u32| (MIN_REQUEST_DIMENSION..=MAX_REQUEST_DIMENSION).contains(&v);
        if !ok(width) || !ok(height) {
            return Err(DisplayError::BadSize {
                scanout,
                width,
                height,
                min: MIN_REQUEST_DIMENSION,
                max: MAX_REQUEST_DIMENSION,
            });
        }
        // Not called under the lock: the GPU takes its own.
        let resizer = lock(&self.resizer)
            .clone()
            .ok_or(DisplayError::NoResizer(scanout))?;
        resizer
            .request_size(scanout, width, height)
            .map_err(|reason| DisplayError::ResizeRefused { scanout, reason })
    }

    /// Subscribes to changes. `wake` is called (from whichever thread made
    /// the change, so it must be quick) when changes arrive for a
    /// subscription that had none pending. A new subscription has
    /// everything pending: call [`Display::updates`] once right away.
    pub fn subscribe(&self, wake: Box<dyn Fn() + Send + Sync>) -> Subscription {
        let shared = Arc::new(Shared {
            pending: Mutex::new(vec![Pending::everything(); self.scanouts.len()]),
            wake,
        });
        let mut subs = lock(&self.subscribers);
        subs.retain(|w| w.strong_count() > 0);
        subs.push(Arc::downgrade(&shared));
        Subscription { shared }
    }

    /// How many subscriptions are alive.
    pub fn subscribers(&self) -> usize {
        lock(&self.subscribers)
            .iter()
            .filter(|w| w.strong_count() > 0)
            .count()
    }

    /// Takes what changed for `sub` since the last call, with the pixels
    /// as they are now. Empty when nothing changed.
    pub fn updates(&self, sub: &Subscription) -> Vec<Update> {
        let pending = std::mem::replace(
            &mut *lock(&sub.shared.pending),
            vec![Pending::default(); self.scanouts.len()],
        );
        let mut out = Vec::new();
        for (i, p) in pending.into_iter().enumerate() {
            if p.is_empty() {
                continue;
            }
            let scanout = i as u32;
            let s = lock(&self.scanouts[i]);
            if p.mode {
                out.push(Update::Mode {
                    scanout,
                    mode: s.mode,
                });
                if let (Some((w, h)), true) = (s.mode, s.shown) {
                    let rect = Rect::new(0, 0, w, h);
                    out.push(Update::Pixels {
                        scanout,
                        rect,
                        rgba: s.fb.clone(),
                    });
                }
            } else if let (Some((w, h)), true) = (s.mode, s.shown) {
                for &r in p.damage.rects() {
                    let rect = clip(r, w, h);
                    if !rect.is_empty() {
                        out.push(Update::Pixels {
                            scanout,
                            rect,
                            rgba: s.read(rect),
                        });
                    }
                }
            }
            if p.cursor_image {
                out.push(Update::Cursor {
                    scanout,
                    image: s.cursor.clone(),
                });
            }
            if p.cursor_image || p.cursor_pos {
                let (x, y) = s.cursor_pos;
                out.push(Update::CursorMove { scanout, x, y });
            }
        }
        out
    }

    /// Records a change of `scanout` for every subscriber, waking those
    /// that had nothing pending.
    fn notify(&self, scanout: u32, change: impl Fn(&mut Pending)) {
        let mut subs = lock(&self.subscribers);
        subs.retain(|w| w.strong_count() > 0);
        for sub in subs.iter().filter_map(Weak::upgrade) {
            let was_empty = {
                let mut pending = lock(&sub.pending);
                let Some(p) = pending.get_mut(scanout as usize) else {
                    continue;
                };
                let was_empty = p.is_empty();
                change(p);
                was_empty
            };
            if was_empty {
                (sub.wake)();
            }
        }
    }

    fn set_mode_locked(&self, scanout: u32, s: &mut Scanout, mode: Option<(u32, u32)>) -> bool {
        let mode = match mode {
            Some((0, _)) | Some((_, 0)) => None,
            other => other,
        };
        if mode == s.mode {
            return false;
        }
        let old_pixels = s.mode.map_or(0, |(w, h)| u64::from(w) * u64::from(h));
        let new_pixels = mode.map_or(0, |(w, h)| u64::from(w) * u64::from(h));
        if let Some((w, h)) = mode {
            if w > MAX_DIMENSION || h > MAX_DIMENSION {
                log::warn!(
                    "display {scanout}: mode {w}x{h} refused (at most {MAX_DIMENSION} on a side)"
                );
                return false;
            }
            let reserved =
                self.pixels_held
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |held| {
                        let total = held - old_pixels + new_pixels;
                        (total <= self.pixel_budget).then_some(total)
                    });
            if reserved.is_err() {
                log::warn!(
                    "display {scanout}: mode {w}x{h} refused (all displays together hold at most {} pixels)",
                    self.pixel_budget
                );
                return false;
            }
            let mut fb = Vec::new();
            if fb.try_reserve_exact(new_pixels as usize * 4).is_err() {
                log::warn!("display {scanout}: mode {w}x{h} refused (out of memory)");
                self.pixels_held.fetch_add(old_pixels, Ordering::SeqCst);
                self.pixels_held.fetch_sub(new_pixels, Ordering::SeqCst);
                return false;
            }
            fb.extend(std::iter::repeat_n([0, 0, 0, 255], new_pixels as usize).flatten());
            s.fb = fb;
        } else {
            self.pixels_held.fetch_sub(old_pixels, Ordering::SeqCst);
            s.fb = Vec::new();
        }
        log::debug!("display {scanout}: mode {mode:?}");
        s.mode = mode;
        s.shown = false;
        true
    }
}

impl ScanoutSink for Display {
    fn set_mode(&self, scanout: u32, mode: Option<(u32, u32)>) {
        let Ok(s) = self.scanout(scanout) else {
            log::warn!("display {scanout}: set_mode on a scanout that does not exist");
            return;
        };
        let changed = self.set_mode_locked(scanout, &mut lock(s), mode);
        if changed {
            self.notify(scanout, |p| {
                p.mode = true;
                p.damage.clear();
            });
        }
    }

    fn update(&self, scanout: u32, frame: &FrameView<'_>, damage: Rect) {
        let Ok(s) = self.scanout(scanout) else {
            log::warn!("display {scanout}: update on a scanout that does not exist");
            return;
        };
        let rect = {
            let mut s = lock(s);
            let Some((w, h)) = s.mode else {
                log::debug!("display {scanout}: update while off, ignored");
                return;
            };
            let rect = clip(clip(damage, w, h), frame.width, frame.height);
            if rect.is_empty() {
                return;
            }
            let row_bytes = rect.width as usize * 4;
            let mut rows = 0;
            for y in rect.y..rect.y + rect.height {
                let src_start = y as u64 * u64::from(frame.stride) + u64::from(rect.x) * 4;
                let src_end = src_start + row_bytes as u64;
                if src_end > frame.data.len() as u64 {
                    log::warn!(
                        "display {scanout}: frame data too short ({} bytes, stride {}), row {y} on ignored",
                        frame.data.len(),
                        frame.stride
                    );
                    break;
                }
                let dst_start = (y as usize * w as usize + rect.x as usize) * 4;
                row_to_rgba(
                    frame.format,
                    &frame.data[src_start as usize..src_end as usize],
                    &mut s.fb[dst_start..dst_start + row_bytes],
                );
                rows += 1;
            }
            if rows == 0 {
                return;
            }
            s.shown = true;
            s.frames += 1;
            Rect::new(rect.x, rect.y, rect.width, rows)
        };
        self.notify(scanout, |p| {
            if !p.mode {
                p.damage.add(rect);
            }
        });
    }

    fn set_cursor(&self, scanout: u32, image: Option<&CursorImage>) {
        let Ok(s) = self.scanout(scanout) else {
            log::warn!("display {scanout}: set_cursor on a scanout that does not exist");
            return;
        };
        if let Some(c) = image {
            if c.width > MAX_CURSOR_DIMENSION || c.height > MAX_CURSOR_DIMENSION {
                log::warn!(
                    "display {scanout}: cursor {}x{} refused (at most {MAX_CURSOR_DIMENSION} on a side)",
                    c.width,
                    c.height
                );
                return;
            }
            if c.rgba.len() as u64 != u64::from(c.width) * u64::from(c.height) * 4 {
                log::warn!(
                    "display {scanout}: cursor {}x{} with {} bytes refused",
                    c.width,
                    c.height,
                    c.rgba.len()
                );
                return;
            }
        }
        lock(s).cursor = image.cloned();
        self.notify(scanout, |p| p.cursor_image = true);
    }

    fn move_cursor(&self, scanout: u32, x: i32, y: i32) {
        let Ok(s) = self.scanout(scanout) else {
            log::warn!("display {scanout}: move_cursor on a scanout that does not exist");
            return;
        };
        {
            let mut s = lock(s);
            if s.cursor_pos == (x, y) {
                return;
            }
            s.cursor_pos = (x, y);
        }
        self.notify(scanout, |p| p.cursor_pos = true);
    }
}

#[cfg(test)]
mod tests;
