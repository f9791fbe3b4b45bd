//! PNG encoding of opaque frames (screenshots, the web viewer's large
//! rectangles) with the `png` crate's fast settings: fdeflate and a cheap
//! filter, a few milliseconds for a 1080p screen.

use crate::convert::rgba_to_rgb;
use crate::DisplayError;

/// Encodes `width` x `height` opaque RGBA8 pixels (`rgba`, tightly packed)
/// as an 8-bit RGB PNG; the alpha bytes are dropped.
pub fn png_from_rgba(width: u32, height: u32, rgba: &[u8]) -> Result<Vec<u8>, DisplayError> {
    let rgb = rgba_to_rgb(rgba);
    let mut out = Vec::with_capacity(rgb.len() / 4 + 1024);
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    let mut writer = encoder.write_header().map_err(DisplayError::Png)?;
    writer.write_image_data(&rgb).map_err(DisplayError::Png)?;
    writer.finish().map_err(DisplayError::Png)?;
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Decodes a PNG to RGBA8 (tests): (width, height, pixels).
    pub(crate) fn decode_rgba(data: &[u8]) -> (u32, u32, Vec<u8>) {
        let decoder = png::Decoder::new(std::io::Cursor::new(data));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        let rgba = match info.color_type {
            png::ColorType::Rgb => buf
                .chunks_exact(3)
                .flat_map(|p| [p[0], p[1], p[2], 255])
                .collect(),
            png::ColorType::Rgba => buf,
            other => panic!("unexpected color type {other:?}"),
        };
        (info.width, info.height, rgba)
    }

    #[test]
    fn round_trips_exact_pixels() {
        let (w, h) = (37, 23);
        let rgba: Vec<u8> = (0..w * h)
            .flat_map(|i| [(i * 7) as u8, (i * 13) as u8, (i * 31) as u8, 255])
            .collect();
        let png = png_from_rgba(w, h, &rgba).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(decode_rgba(&png), (w, h, rgba));
    }

    #[test]
    fn wrong_buffer_size_is_an_error() {
        assert!(matches!(
            png_from_rgba(4, 4, &[0; 8]),
            Err(DisplayError::Png(_))
        ));
    }
}
