//! Pixel conversion: every virtio-gpu 2D format to the store's RGBA8.
//!
//! A scanout is opaque (a screen shows no transparency, as on real
//! display hardware the primary plane's alpha is ignored), so the alpha byte
//! of the formats that carry one is dropped and every stored pixel has
//! alpha 255.

use crate::PixelFormat;

/// For each format, the source byte offsets of red, green and blue.
const fn rgb_offsets(format: PixelFormat) -> [usize; 3] {
    match format {
        PixelFormat::B8G8R8A8 | PixelFormat::B8G8R8X8 => [2, 1, 0],
        PixelFormat::A8R8G8B8 | PixelFormat::X8R8G8B8 => [1, 2, 3],
        PixelFormat::R8G8B8A8 | PixelFormat::R8G8B8X8 => [0, 1, 2],
        PixelFormat::X8B8G8R8 | PixelFormat::A8B8G8R8 => [3, 2, 1],
    }
}

/// Converts a run of pixels in `format` (`src`) to opaque RGBA8 (`dst`).
/// Converts `min(src.len(), dst.len()) / 4` pixels.
pub fn row_to_rgba(format: PixelFormat, src: &[u8], dst: &mut [u8]) {
    // Monomorphized per format so that the inner loop has constant offsets
    // (the compiler vectorizes it).
    fn run<const R: usize, const G: usize, const B: usize>(src: &[u8], dst: &mut [u8]) {
        for (s, d) in src.chunks_exact(4).zip(dst.chunks_exact_mut(4)) {
            d[0] = s[R];
            d[1] = s[G];
            d[2] = s[B];
            d[3] = 255;
        }
    }
    match rgb_offsets(format) {
        [2, 1, 0] => run::<2, 1, 0>(src, dst),
        [1, 2, 3] => run::<1, 2, 3>(src, dst),
        [0, 1, 2] => run::<0, 1, 2>(src, dst),
        _ => run::<3, 2, 1>(src, dst),
    }
}

/// Converts one pixel (tests and small cursor paths).
pub fn pixel_to_rgba(format: PixelFormat, px: [u8; 4]) -> [u8; 4] {
    let mut out = [0; 4];
    row_to_rgba(format, &px, &mut out);
    out
}

/// RGBA8 rows to RGB8 (the alpha byte dropped), for PNG encoding of
/// opaque images.
pub fn rgba_to_rgb(src: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(src.len() / 4 * 3);
    for p in src.chunks_exact(4) {
        out.extend_from_slice(&p[..3]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Red 0x11, green 0x22, blue 0x33, alpha (or padding) 0x44, laid out
    /// as each format names its bytes.
    fn sample(format: PixelFormat) -> [u8; 4] {
        match format {
            PixelFormat::B8G8R8A8 | PixelFormat::B8G8R8X8 => [0x33, 0x22, 0x11, 0x44],
            PixelFormat::A8R8G8B8 | PixelFormat::X8R8G8B8 => [0x44, 0x11, 0x22, 0x33],
            PixelFormat::R8G8B8A8 | PixelFormat::R8G8B8X8 => [0x11, 0x22, 0x33, 0x44],
            PixelFormat::X8B8G8R8 | PixelFormat::A8B8G8R8 => [0x44, 0x33, 0x22, 0x11],
        }
    }

    const ALL: [PixelFormat; 8] = [
        PixelFormat::B8G8R8A8,
        PixelFormat::B8G8R8X8,
        PixelFormat::A8R8G8B8,
        PixelFormat::X8R8G8B8,
        PixelFormat::R8G8B8A8,
        PixelFormat::X8B8G8R8,
        PixelFormat::A8B8G8R8,
        PixelFormat::R8G8B8X8,
    ];

    #[test]
    fn every_format_converts_to_opaque_rgba() {
        for format in ALL {
            assert_eq!(
                pixel_to_rgba(format, sample(format)),
                [0x11, 0x22, 0x33, 0xff],
                "{format:?}"
            );
        }
    }

    #[test]
    fn rows_convert_pixel_by_pixel() {
        for format in ALL {
            let src: Vec<u8> = (0..64u8).collect();
            let mut dst = vec![0; 64];
            row_to_rgba(format, &src, &mut dst);
            for (i, (s, d)) in src.chunks_exact(4).zip(dst.chunks_exact(4)).enumerate() {
                let px = [s[0], s[1], s[2], s[3]];
                assert_eq!(d, pixel_to_rgba(format, px), "{format:?} pixel {i}");
            }
        }
    }

    #[test]
    fn short_destination_converts_what_fits() {
        let src = [1, 2, 3, 4, 5, 6, 7, 8];
        let mut dst = [0; 4];
        row_to_rgba(PixelFormat::R8G8B8A8, &src, &mut dst);
        assert_eq!(dst, [1, 2, 3, 255]);
    }

    #[test]
    fn rgb_drops_alpha() {
        assert_eq!(
            rgba_to_rgb(&[1, 2, 3, 4, 5, 6, 7, 8]),
            vec![1, 2, 3, 5, 6, 7]
        );
    }
}
