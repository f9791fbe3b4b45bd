//! One scanout as a window shows it: its own copy of the frame, kept up to
//! date from the store's [`Update`]s, the cursor image and position, and
//! the drawing of all that into a window buffer of any size (letterboxed,
//! cursor composited with [`composite_cursor`]).
//!
//! Independent of the window system, so it is tested without one.

use crate::compose::composite_cursor;
use crate::store::Update;
use crate::window::scale::{draw_frame, draw_rect, Viewport};
use crate::{CursorImage, Rect};

/// What a window shows for one scanout.
#[derive(Debug, Default)]
pub struct Screen {
    mode: Option<(u32, u32)>,
    /// RGBA8, mode width x height (empty while off).
    frame: Vec<u8>,
    cursor: Option<CursorImage>,
    cursor_pos: (i32, i32),
}

impl Screen {
    pub fn new() -> Self {
        Self::default()
    }

    /// The scanout's size (None: off).
    pub fn mode(&self) -> Option<(u32, u32)> {
        self.mode
    }

    /// Whether the guest shows a cursor image on this scanout.
    pub fn has_cursor(&self) -> bool {
        self.cursor.is_some()
    }

    /// Where the scanout lands in a window of `size` physical pixels.
    pub fn viewport(&self, size: (u32, u32)) -> Option<Viewport> {
        Viewport::fit(self.mode?, size)
    }

    /// Takes in one change of this scanout; returns whether what the window
    /// shows changed (so it needs drawing).
    pub fn apply(&mut self, update: Update) -> bool {
        match update {
            Update::Mode { mode, .. } => {
                self.set_mode(mode);
                true
            }
            Update::Pixels { rect, rgba, .. } => self.copy(rect, &rgba),
            Update::Cursor { image, .. } => {
                let changed = self.cursor.is_some() || image.is_some();
                self.cursor = image;
                changed
            }
            Update::CursorMove { x, y, .. } => {
                let moved = self.cursor_pos != (x, y);
                self.cursor_pos = (x, y);
                moved && self.cursor.is_some()
            }
        }
    }

    fn set_mode(&mut self, mode: Option<(u32, u32)>) {
        self.frame = Vec::new();
        self.mode = None;
        let Some((w, h)) = mode else {
            return;
        };
        let pixels = u64::from(w) * u64::from(h);
        let Ok(pixels) = usize::try_from(pixels) else {
            return;
        };
        let mut frame = Vec::new();
        if frame.try_reserve_exact(pixels.saturating_mul(4)).is_err() {
            log::warn!("display: no memory for a {w}x{h} window picture; showing black");
            return;
        }
        frame.extend(std::iter::repeat_n([0, 0, 0, 255], pixels).flatten());
        self.frame = frame;
        self.mode = Some((w, h));
    }

    /// Copies `rgba` (`rect.width * 4` bytes a row) into the frame at
    /// `rect`. Pixels for a rectangle that does not fit are ignored.
    fn copy(&mut self, rect: Rect, rgba: &[u8]) -> bool {
        let Some((w, h)) = self.mode else {
            return false;
        };
        let fits = u64::from(rect.x) + u64::from(rect.width) <= u64::from(w)
            && u64::from(rect.y) + u64::from(rect.height) <= u64::from(h)
            && rgba.len() as u64 == u64::from(rect.width) * u64::from(rect.height) * 4;
        if !fits || rect.is_empty() {
            return false;
        }
        let row = rect.width as usize * 4;
        for (i, src) in rgba.chunks_exact(row).enumerate() {
            let start = ((rect.y as usize + i) * w as usize + rect.x as usize) * 4;
            self.frame[start..start + row].copy_from_slice(src);
        }
        true
    }

    /// The scanout's pixels under the cursor with the cursor blended on
    /// top, and where they are (None: no cursor, or it is off the screen).
    fn cursor_patch(&self) -> Option<(Rect, Vec<u8>)> {
        let (w, h) = self.mode?;
        let c = self.cursor.as_ref()?;
        let (x, y) = (i64::from(self.cursor_pos.0), i64::from(self.cursor_pos.1));
        let left = x - i64::from(c.hot_x);
        let top = y - i64::from(c.hot_y);
        let x0 = left.clamp(0, i64::from(w));
        let y0 = top.clamp(0, i64::from(h));
        let x1 = (left + i64::from(c.width)).clamp(0, i64::from(w));
        let y1 = (top + i64::from(c.height)).clamp(0, i64::from(h));
        if x0 >= x1 || y0 >= y1 {
            return None;
        }
        let rect = Rect::new(x0 as u32, y0 as u32, (x1 - x0) as u32, (y1 - y0) as u32);
        let row = rect.width as usize * 4;
        let mut patch = Vec::with_capacity(row * rect.height as usize);
        for py in rect.y..rect.y + rect.height {
            let start = (py as usize * w as usize + rect.x as usize) * 4;
            patch.extend_from_slice(&self.frame[start..start + row]);
        }
        // The hot spot relative to the patch: within a cursor's size of it,
        // so it fits an i32.
        let hx = i32::try_from(x - x0).ok()?;
        let hy = i32::try_from(y - y0).ok()?;
        composite_cursor(&mut patch, rect.width, rect.height, c, hx, hy);
        Some((rect, patch))
    }

    /// Draws the scanout into `out`, a window buffer of `size` (0RGB,
    /// rows packed): scaled to fit, bars black, cursor on top. All black
    /// while the scanout is off.
    pub fn render(&self, out: &mut [u32], size: (u32, u32)) {
        let Some(vp) = self.viewport(size) else {
            out.fill(0);
            return;
        };
        draw_frame(&vp, &self.frame, out);
        if let Some((rect, patch)) = self.cursor_patch() {
            draw_rect(&vp, rect, &patch, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pixels(rect: Rect, px: [u8; 4]) -> Update {
        Update::Pixels {
            scanout: 0,
            rect,
            rgba: px.repeat((rect.width * rect.height) as usize),
        }
    }

    fn mode(w: u32, h: u32) -> Update {
        Update::Mode {
            scanout: 0,
            mode: Some((w, h)),
        }
    }

    fn render(s: &Screen, size: (u32, u32)) -> Vec<u32> {
        let mut out = vec![0x0123_4567; (size.0 * size.1) as usize];
        s.render(&mut out, size);
        out
    }

    #[test]
    fn off_is_black() {
        let s = Screen::new();
        assert!(render(&s, (4, 3)).iter().all(|&p| p == 0));
    }

    #[test]
    fn mode_then_pixels() {
        let mut s = Screen::new();
        assert!(s.apply(mode(4, 2)));
        assert!(render(&s, (4, 2)).iter().all(|&p| p == 0), "black at first");
        assert!(s.apply(pixels(Rect::new(1, 0, 2, 2), [0x11, 0x22, 0x33, 255])));
        let out = render(&s, (4, 2));
        assert_eq!(
            out,
            vec![0, 0x112233, 0x112233, 0, 0, 0x112233, 0x112233, 0]
        );
        // Scaled 2x into a wider window: bars, then each pixel doubled.
        let out = render(&s, (10, 4));
        assert_eq!(
            &out[..10],
            &[0, 0, 0, 0x112233, 0x112233, 0x112233, 0x112233, 0, 0, 0]
        );
    }

    #[test]
    fn pixels_that_do_not_fit_are_ignored() {
        let mut s = Screen::new();
        assert!(!s.apply(pixels(Rect::new(0, 0, 1, 1), [9; 4])), "off");
        s.apply(mode(4, 4));
        assert!(!s.apply(pixels(Rect::new(3, 3, 2, 1), [9; 4])));
        assert!(!s.apply(Update::Pixels {
            scanout: 0,
            rect: Rect::new(0, 0, 2, 2),
            rgba: vec![9; 15],
        }));
        assert!(!s.apply(pixels(Rect::new(u32::MAX, 0, 2, 1), [9; 4])));
        assert!(render(&s, (4, 4)).iter().all(|&p| p == 0));
        assert!(s.apply(Update::Mode {
            scanout: 0,
            mode: None
        }));
        assert_eq!(s.mode(), None);
    }

    #[test]
    fn cursor_is_composited_at_its_hot_spot() {
        let mut s = Screen::new();
        s.apply(mode(8, 8));
        s.apply(pixels(Rect::new(0, 0, 8, 8), [0, 0, 255, 255]));
        let mut img = CursorImage {
            width: 3,
            height: 3,
            hot_x: 1,
            hot_y: 1,
            rgba: [0, 0, 0, 0].repeat(9),
        };
        // Opaque white centre, half-transparent red top-left corner.
        img.rgba[16..20].copy_from_slice(&[255, 255, 255, 255]);
        img.rgba[0..4].copy_from_slice(&[255, 0, 0, 128]);
        assert!(
            !s.apply(Update::CursorMove {
                scanout: 0,
                x: 5,
                y: 5
            }),
            "no image yet: nothing to redraw"
        );
        assert!(s.apply(Update::Cursor {
            scanout: 0,
            image: Some(img.clone())
        }));
        assert!(s.has_cursor());
        let out = render(&s, (8, 8));
        assert_eq!(out[5 * 8 + 5], 0xffffff, "hot spot");
        // (255*128 + 0*127)/255 = 128 red; blue 255*127/255 = 127.
        assert_eq!(out[4 * 8 + 4], 0x80007f, "corner blended");
        assert_eq!(out[4 * 8 + 5], 0x0000ff, "transparent");
        let lit = out.iter().filter(|&&p| p != 0x0000ff).count();
        assert_eq!(lit, 2);
        // The frame itself is untouched: moving the cursor leaves no trail.
        assert!(s.apply(Update::CursorMove {
            scanout: 0,
            x: 1,
            y: 1
        }));
        let out = render(&s, (8, 8));
        assert_eq!(out[5 * 8 + 5], 0x0000ff);
        assert_eq!(out[8 + 1], 0xffffff);
        // Scaled 2x: the hot spot pixel covers 2x2 window pixels.
        let out = render(&s, (16, 16));
        for (x, y) in [(2, 2), (3, 2), (2, 3), (3, 3)] {
            assert_eq!(out[y * 16 + x], 0xffffff, "({x}, {y})");
        }
        assert_eq!(out[4 * 16 + 4], 0x0000ff);
    }

    #[test]
    fn cursor_off_screen_or_hidden() {
        let mut s = Screen::new();
        s.apply(mode(4, 4));
        s.apply(Update::Cursor {
            scanout: 0,
            image: Some(CursorImage {
                width: 2,
                height: 2,
                hot_x: 0,
                hot_y: 0,
                rgba: [255; 4].repeat(4),
            }),
        });
        for (x, y) in [
            (-2, -2),
            (4, 0),
            (0, 4),
            (i32::MIN, i32::MAX),
            (i32::MAX, 0),
        ] {
            s.apply(Update::CursorMove { scanout: 0, x, y });
            assert!(render(&s, (4, 4)).iter().all(|&p| p == 0), "({x}, {y})");
        }
        s.apply(Update::CursorMove {
            scanout: 0,
            x: -1,
            y: 3,
        });
        let out = render(&s, (4, 4));
        assert_eq!(out.iter().filter(|&&p| p == 0xffffff).count(), 1);
        assert_eq!(out[12], 0xffffff);
        assert!(s.apply(Update::Cursor {
            scanout: 0,
            image: None
        }));
        assert!(!s.has_cursor());
        assert!(render(&s, (4, 4)).iter().all(|&p| p == 0));
    }
}
