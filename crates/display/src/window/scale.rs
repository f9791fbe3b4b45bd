//! Fitting a scanout into a window: the letterboxed viewport (aspect ratio
//! kept, centred, black bars on the sides or top and bottom), drawing RGBA8
//! pixels into the window's 0RGB buffer with nearest-neighbour scaling, and
//! the way back, from a window position to the scanout pixel under it.
//!
//! Everything is integer arithmetic in physical pixels, so the picture and
//! the pointer agree: the scanout pixel drawn at window pixel `p` is the one
//! [`Viewport::to_scanout`] reports for a pointer on `p`.

use crate::Rect;

/// Where a scanout of `src` pixels lands in a window of `dst` pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Viewport {
    /// The scanout's size.
    pub src_width: u32,
    pub src_height: u32,
    /// The window's size.
    pub dst_width: u32,
    pub dst_height: u32,
    /// The picture's place and size inside the window.
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl Viewport {
    /// The largest rectangle of the scanout's aspect ratio that fits the
    /// window, centred. None when either side of either size is 0.
    pub fn fit(src: (u32, u32), dst: (u32, u32)) -> Option<Viewport> {
        let (sw, sh) = (u128::from(src.0), u128::from(src.1));
        let (dw, dh) = (u128::from(dst.0), u128::from(dst.1));
        if sw == 0 || sh == 0 || dw == 0 || dh == 0 {
            return None;
        }
        // Rounded to the nearest pixel; never larger than the window, since
        // the exact value is at most the (integer) window side.
        let (width, height) = if sw * dh <= dw * sh {
            // Relatively taller than the window: full height, bars left and right.
            ((2 * sw * dh + sh) / (2 * sh), dh)
        } else {
            // Relatively wider: full width, bars above and below.
            (dw, (2 * sh * dw + sw) / (2 * sw))
        };
        let (width, height) = (width.clamp(1, dw), height.clamp(1, dh));
        Some(Viewport {
            src_width: src.0,
            src_height: src.1,
            dst_width: dst.0,
            dst_height: dst.1,
            x: ((dw - width) / 2) as u32,
            y: ((dh - height) / 2) as u32,
            width: width as u32,
            height: height as u32,
        })
    }

    /// The scanout column drawn at viewport column `i` (0 ≤ i < width):
    /// the one under the centre of that window pixel.
    fn src_x(&self, i: u32) -> u32 {
        sample(i, self.width, self.src_width)
    }

    fn src_y(&self, j: u32) -> u32 {
        sample(j, self.height, self.src_height)
    }

    /// The scanout pixel under the window position (`px`, `py`) (physical
    /// pixels, as the window system reports the pointer). Positions on the
    /// bars or outside the window are clamped to the nearest edge pixel.
    pub fn to_scanout(&self, px: f64, py: f64) -> (u32, u32) {
        (
            back(px, self.x, self.width, self.src_width),
            back(py, self.y, self.height, self.src_height),
        )
    }
}

/// Source index for destination index `i` of `dst` (nearest neighbour at
/// the pixel centre): floor((i + 0.5) * src / dst).
fn sample(i: u32, dst: u32, src: u32) -> u32 {
    if dst == 0 {
        return 0;
    }
    let v = (2 * u128::from(i) + 1) * u128::from(src) / (2 * u128::from(dst));
    v.min(u128::from(src.saturating_sub(1))) as u32
}

/// The inverse of [`sample`] for a window coordinate: the window pixel
/// `floor(p)`, relative to the viewport's `start`, clamped inside it, then
/// sampled like drawing does.
fn back(p: f64, start: u32, len: u32, src: u32) -> u32 {
    if len == 0 || src == 0 {
        return 0;
    }
    // NaN and infinities end up at an edge: `as` saturates and maps NaN to 0.
    let rel = (p.floor() - f64::from(start)).clamp(0.0, f64::from(len - 1));
    sample(rel as u32, len, src)
}

/// Packs RGBA8 into the window buffer's format (0x00RRGGBB).
fn pack(p: &[u8]) -> u32 {
    (u32::from(p[0]) << 16) | (u32::from(p[1]) << 8) | u32::from(p[2])
}

/// Draws a whole scanout into `out` (the window's buffer, `vp.dst_width`
/// x `vp.dst_height`, 0RGB), bars black. `frame` is `vp.src_width` x
/// `vp.src_height` RGBA8; a buffer of the wrong size is left black.
pub fn draw_frame(vp: &Viewport, frame: &[u8], out: &mut [u32]) {
    out.fill(0);
    draw_rect(vp, Rect::new(0, 0, vp.src_width, vp.src_height), frame, out);
}

/// Draws `pixels` (RGBA8, `rect.width * 4` bytes a row), which hold the
/// scanout's `rect`, into the window pixels that show that rectangle.
/// Nothing is drawn when the sizes do not match.
pub fn draw_rect(vp: &Viewport, rect: Rect, pixels: &[u8], out: &mut [u32]) {
    let dst_len = u64::from(vp.dst_width) * u64::from(vp.dst_height);
    let src_len = u64::from(rect.width) * u64::from(rect.height) * 4;
    if out.len() as u64 != dst_len
        || pixels.len() as u64 != src_len
        || rect.is_empty()
        || u64::from(rect.x) + u64::from(rect.width) > u64::from(vp.src_width)
        || u64::from(rect.y) + u64::from(rect.height) > u64::from(vp.src_height)
    {
        return;
    }
    // Sampling is monotonic, so the viewport columns (rows) that show the
    // rectangle are one contiguous range.
    let cols = span(vp.width, rect.x, rect.width, |i| vp.src_x(i));
    let rows = span(vp.height, rect.y, rect.height, |j| vp.src_y(j));
    let xs: Vec<usize> = cols
        .clone()
        .map(|i| (vp.src_x(i) - rect.x) as usize)
        .collect();
    let stride = rect.width as usize * 4;
    for j in rows {
        let sy = (vp.src_y(j) - rect.y) as usize;
        let src_row = &pixels[sy * stride..(sy + 1) * stride];
        let start = (vp.y + j) as usize * vp.dst_width as usize + (vp.x + cols.start) as usize;
        let dst_row = &mut out[start..start + xs.len()];
        for (d, &sx) in dst_row.iter_mut().zip(&xs) {
            *d = pack(&src_row[sx * 4..sx * 4 + 4]);
        }
    }
}

/// The indices `0..len` whose `map` lies in `start..start + count`
/// (`map` non-decreasing).
fn span(len: u32, start: u32, count: u32, map: impl Fn(u32) -> u32) -> std::ops::Range<u32> {
    let end = start + count;
    let first = partition_point(len, |i| map(i) < start);
    let last = partition_point(len, |i| map(i) < end);
    first..last
}

/// The first index in `0..len` for which `pred` is false (`pred` true then
/// false along the range).
fn partition_point(len: u32, pred: impl Fn(u32) -> bool) -> u32 {
    let (mut lo, mut hi) = (0, len);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vp(src: (u32, u32), dst: (u32, u32)) -> Viewport {
        Viewport::fit(src, dst).unwrap()
    }

    #[test]
    fn same_size_fills_the_window() {
        let v = vp((640, 480), (640, 480));
        assert_eq!((v.x, v.y, v.width, v.height), (0, 0, 640, 480));
    }

    #[test]
    fn wider_window_gets_bars_left_and_right() {
        // 4:3 in 16:9 → 960x720 centred in 1280x720.
        let v = vp((640, 480), (1280, 720));
        assert_eq!((v.x, v.y, v.width, v.height), (160, 0, 960, 720));
    }

    #[test]
    fn taller_window_gets_bars_above_and_below() {
        // 16:10 in a square → 800x500 centred in 800x800.
        let v = vp((1280, 800), (800, 800));
        assert_eq!((v.x, v.y, v.width, v.height), (0, 150, 800, 500));
    }

    #[test]
    fn scaling_up_and_odd_sizes() {
        let v = vp((100, 50), (301, 200));
        // 2:1 in 301x200: full width 301, height 150.5 → 151 (rounded), y = 24.
        assert_eq!((v.x, v.y, v.width, v.height), (0, 24, 301, 151));
        let v = vp((3, 1000), (10, 10));
        assert_eq!((v.width, v.height), (1, 10), "never thinner than a pixel");
        assert!(Viewport::fit((0, 10), (10, 10)).is_none());
        assert!(Viewport::fit((10, 10), (10, 0)).is_none());
        // Extremes stay inside the window.
        let v = vp((16384, 1), (u32::MAX, 3));
        assert!(v.x + v.width <= v.dst_width && v.y + v.height <= v.dst_height);
        let v = vp((1, 16384), (3, u32::MAX));
        assert!(v.x + v.width <= v.dst_width && v.y + v.height <= v.dst_height);
    }

    #[test]
    fn pointer_maps_back_at_one_to_one() {
        let v = vp((320, 200), (320, 200));
        assert_eq!(v.to_scanout(0.0, 0.0), (0, 0));
        assert_eq!(v.to_scanout(100.0, 50.0), (100, 50));
        assert_eq!(v.to_scanout(100.7, 50.2), (100, 50));
        assert_eq!(v.to_scanout(319.0, 199.0), (319, 199));
    }

    #[test]
    fn pointer_maps_back_through_scaling_and_bars() {
        // 320x200 shown at 2x in 800x400: viewport 640x400 at x = 80.
        let v = vp((320, 200), (800, 400));
        assert_eq!((v.x, v.y, v.width, v.height), (80, 0, 640, 400));
        assert_eq!(v.to_scanout(80.0, 0.0), (0, 0));
        assert_eq!(v.to_scanout(81.0, 1.0), (0, 0));
        assert_eq!(v.to_scanout(82.0, 2.0), (1, 1));
        assert_eq!(v.to_scanout(80.0 + 2.0 * 100.0, 2.0 * 50.0), (100, 50));
        assert_eq!(v.to_scanout(719.0, 399.0), (319, 199));
        // On the bars and outside: the nearest edge.
        assert_eq!(v.to_scanout(10.0, 200.0), (0, 100));
        assert_eq!(v.to_scanout(790.0, 200.0), (319, 100));
        assert_eq!(v.to_scanout(-5.0, -5.0), (0, 0));
        assert_eq!(v.to_scanout(1e12, 1e12), (319, 199));
        assert_eq!(v.to_scanout(f64::NAN, f64::INFINITY), (0, 199));
    }

    #[test]
    fn pointer_and_picture_agree_everywhere() {
        // The scanout pixel drawn at each window pixel is the one the
        // pointer reports there.
        for (src, dst) in [
            ((7, 5), (23, 11)),
            ((64, 48), (50, 50)),
            ((5, 9), (5, 9)),
            ((13, 3), (100, 7)),
        ] {
            let v = vp(src, dst);
            let frame: Vec<u8> = (0..src.0 * src.1)
                .flat_map(|i| {
                    let (x, y) = (i % src.0, i / src.0);
                    [x as u8, y as u8, 7, 255]
                })
                .collect();
            let mut out = vec![0u32; (dst.0 * dst.1) as usize];
            draw_frame(&v, &frame, &mut out);
            for py in v.y..v.y + v.height {
                for px in v.x..v.x + v.width {
                    let (sx, sy) = v.to_scanout(f64::from(px), f64::from(py));
                    let want = (sx << 16) | (sy << 8) | 7;
                    assert_eq!(
                        out[(py * dst.0 + px) as usize],
                        want,
                        "{src:?} in {dst:?} at ({px}, {py})"
                    );
                }
            }
        }
    }

    #[test]
    fn bars_are_black_and_the_picture_is_centred() {
        let v = vp((2, 2), (8, 4)); // 4x4 at x = 2
        let frame = [255u8, 0, 0, 255].repeat(4);
        let mut out = vec![0xdead_beef; 32];
        draw_frame(&v, &frame, &mut out);
        for y in 0..4 {
            let row: Vec<u32> = out[y * 8..y * 8 + 8].to_vec();
            assert_eq!(
                row,
                vec![0, 0, 0xff0000, 0xff0000, 0xff0000, 0xff0000, 0, 0],
                "row {y}"
            );
        }
    }

    #[test]
    fn a_rectangle_redraws_only_its_pixels() {
        // 4x4 scanout at 2x: scanout (1,1)-(2,2) covers window (2,2)-(5,5).
        let v = vp((4, 4), (8, 8));
        let mut out = vec![0u32; 64];
        draw_rect(
            &v,
            Rect::new(1, 1, 2, 2),
            &[0, 0, 255, 255].repeat(4),
            &mut out,
        );
        for y in 0..8 {
            for x in 0..8 {
                let inside = (2..6).contains(&x) && (2..6).contains(&y);
                assert_eq!(out[y * 8 + x], if inside { 0xff } else { 0 }, "({x}, {y})");
            }
        }
    }

    #[test]
    fn wrong_sizes_draw_nothing() {
        let v = vp((4, 4), (4, 4));
        let mut out = vec![0u32; 16];
        draw_rect(&v, Rect::new(0, 0, 4, 4), &[255; 60], &mut out);
        draw_rect(&v, Rect::new(3, 3, 2, 2), &[255; 16], &mut out);
        draw_rect(&v, Rect::new(0, 0, 0, 0), &[], &mut out);
        assert!(out.iter().all(|&p| p == 0));
        let mut short = vec![0u32; 15];
        draw_frame(&v, &[255; 64], &mut short);
        assert!(short.iter().all(|&p| p == 0));
    }
}
