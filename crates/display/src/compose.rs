//! Compositing the cursor onto a frame: straight-alpha blending, clipped at
//! the frame's edges, placed by the cursor's hot spot.

use crate::CursorImage;

/// Blends `cursor` onto `frame` (`width` x `height` RGBA8, opaque) with
/// its hot spot at (`x`, `y`). Parts outside the frame are clipped; the
/// frame stays opaque.
pub fn composite_cursor(
    frame: &mut [u8],
    width: u32,
    height: u32,
    cursor: &CursorImage,
    x: i32,
    y: i32,
) {
    let (fw, fh) = (i64::from(width), i64::from(height));
    let (cw, ch) = (i64::from(cursor.width), i64::from(cursor.height));
    if cursor.rgba.len() as u64 != (cw * ch * 4) as u64
        || frame.len() as u64 != (fw * fh * 4) as u64
    {
        return;
    }
    let left = i64::from(x) - i64::from(cursor.hot_x);
    let top = i64::from(y) - i64::from(cursor.hot_y);
    // The cursor's rows and columns that land inside the frame.
    let col0 = (-left).clamp(0, cw);
    let col1 = (fw - left).clamp(0, cw);
    let row0 = (-top).clamp(0, ch);
    let row1 = (fh - top).clamp(0, ch);
    for row in row0..row1 {
        let fy = top + row;
        for col in col0..col1 {
            let fx = left + col;
            let s = ((row * cw + col) * 4) as usize;
            let d = ((fy * fw + fx) * 4) as usize;
            let a = u32::from(cursor.rgba[s + 3]);
            if a == 0 {
                continue;
            }
            for c in 0..3 {
                let src = u32::from(cursor.rgba[s + c]);
                let dst = u32::from(frame[d + c]);
                frame[d + c] = ((src * a + dst * (255 - a) + 127) / 255) as u8;
            }
            frame[d + 3] = 255;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(w: u32, h: u32, px: [u8; 4]) -> Vec<u8> {
        px.repeat((w * h) as usize)
    }

    fn at(f: &[u8], w: u32, x: u32, y: u32) -> [u8; 4] {
        let i = ((y * w + x) * 4) as usize;
        [f[i], f[i + 1], f[i + 2], f[i + 3]]
    }

    fn cursor(w: u32, h: u32, hot: (u32, u32), px: [u8; 4]) -> CursorImage {
        CursorImage {
            width: w,
            height: h,
            hot_x: hot.0,
            hot_y: hot.1,
            rgba: px.repeat((w * h) as usize),
        }
    }

    #[test]
    fn opaque_cursor_covers_and_transparent_leaves() {
        let mut f = frame(8, 8, [10, 20, 30, 255]);
        let c = cursor(2, 2, (0, 0), [200, 100, 50, 255]);
        composite_cursor(&mut f, 8, 8, &c, 3, 4);
        assert_eq!(at(&f, 8, 3, 4), [200, 100, 50, 255]);
        assert_eq!(at(&f, 8, 4, 5), [200, 100, 50, 255]);
        assert_eq!(at(&f, 8, 5, 5), [10, 20, 30, 255]);
        assert_eq!(at(&f, 8, 2, 4), [10, 20, 30, 255]);

        let mut g = frame(8, 8, [10, 20, 30, 255]);
        composite_cursor(
            &mut g,
            8,
            8,
            &cursor(2, 2, (0, 0), [255, 255, 255, 0]),
            3,
            4,
        );
        assert_eq!(g, frame(8, 8, [10, 20, 30, 255]));
    }

    #[test]
    fn half_alpha_blends() {
        let mut f = frame(4, 4, [0, 100, 200, 255]);
        composite_cursor(
            &mut f,
            4,
            4,
            &cursor(1, 1, (0, 0), [255, 0, 100, 128]),
            1,
            1,
        );
        // 255*128/255 = 128; 100*127/255 ≈ 49.8; (100*128 + 200*127)/255 ≈ 149.8
        assert_eq!(at(&f, 4, 1, 1), [128, 50, 150, 255]);
    }

    #[test]
    fn hot_spot_places_the_image() {
        let mut f = frame(10, 10, [0, 0, 0, 255]);
        let mut c = cursor(3, 3, (2, 1), [0, 0, 0, 0]);
        // Only the hot-spot pixel is visible.
        c.rgba[(3 + 2) * 4..(3 + 2) * 4 + 4].copy_from_slice(&[9, 8, 7, 255]);
        composite_cursor(&mut f, 10, 10, &c, 5, 5);
        assert_eq!(at(&f, 10, 5, 5), [9, 8, 7, 255]);
        let lit = f.chunks_exact(4).filter(|p| p[0] != 0).count();
        assert_eq!(lit, 1);
    }

    #[test]
    fn clipped_at_every_edge() {
        for (x, y) in [(-1, -1), (9, 9), (-1, 9), (9, -1), (-100, 3), (3, 1000)] {
            let mut f = frame(10, 10, [0, 0, 0, 255]);
            composite_cursor(
                &mut f,
                10,
                10,
                &cursor(2, 2, (0, 0), [255, 255, 255, 255]),
                x,
                y,
            );
            let lit: Vec<(usize, usize)> = f
                .chunks_exact(4)
                .enumerate()
                .filter(|(_, p)| p[0] == 255)
                .map(|(i, _)| (i % 10, i / 10))
                .collect();
            let want: Vec<(usize, usize)> = (0..10)
                .flat_map(|py| (0..10).map(move |px| (px, py)))
                .filter(|&(px, py)| {
                    let (px, py) = (px as i32, py as i32);
                    px >= x && px < x + 2 && py >= y && py < y + 2
                })
                .collect();
            let mut want = want;
            want.sort_by_key(|&(px, py)| (py, px));
            assert_eq!(lit, want, "cursor at ({x}, {y})");
        }
    }

    #[test]
    fn extreme_positions_and_bad_sizes_do_nothing_harmful() {
        let mut f = frame(4, 4, [1, 2, 3, 255]);
        let c = cursor(64, 64, (63, 63), [255, 255, 255, 255]);
        composite_cursor(&mut f, 4, 4, &c, i32::MIN, i32::MAX);
        composite_cursor(&mut f, 4, 4, &c, i32::MAX, i32::MIN);
        assert_eq!(f, frame(4, 4, [1, 2, 3, 255]));
        let mut bad = c.clone();
        bad.rgba.pop();
        composite_cursor(&mut f, 4, 4, &bad, 0, 0);
        assert_eq!(f, frame(4, 4, [1, 2, 3, 255]));
    }
}
