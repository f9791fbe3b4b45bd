//! The EDID each scanout reports through GET_EDID (VIRTIO_GPU_F_EDID).
//!
//! One 128-byte EDID 1.4 base block, no extensions: manufacturer "PVR", a
//! digital 8-bit-per-colour input, sRGB chromaticity, physical size from the
//! mode at 96 DPI, and three display descriptors: the preferred mode as a
//! detailed timing (CVT reduced-blanking style, 60 Hz; tiny modes get a
//! wider horizontal blank to reach a 10 MHz pixel clock), a display range
//! limits descriptor, and the monitor name "PearVisor". edid-decode rates
//! the blocks conformant. A detailed timing
//! holds at most 4095x4095 pixels and a 655.35 MHz pixel clock: a larger
//! mode is scaled down (same aspect) for the descriptor, and the refresh
//! rate drops where the clock would not fit. The guest still gets the exact
//! mode through GET_DISPLAY_INFO, which Linux uses as the preferred mode.

/// Length of the base block.
pub const EDID_LEN: usize = 128;
/// Monitor name in the name descriptor.
pub const MONITOR_NAME: &str = "PearVisor";
/// Refresh rate of the preferred timing, when the pixel clock allows it.
pub const REFRESH_HZ: u32 = 60;

const H_FRONT_PORCH: u32 = 48;
const H_SYNC: u32 = 32;
const H_BLANK: u32 = 160;
const V_FRONT_PORCH: u32 = 3;
const V_SYNC: u32 = 6;
const V_BACK_PORCH_MIN: u32 = 6;
/// Reduced blanking's minimum vertical blanking time, in µs.
const V_BLANK_MIN_US: u64 = 460;
/// Largest pixel clock of a detailed timing, in 10 kHz units.
const MAX_CLOCK_10KHZ: u64 = 0xffff;
/// Smallest pixel clock EDID checkers accept (10 MHz), in 10 kHz units.
const MIN_CLOCK_10KHZ: u64 = 1000;
/// Largest active size of a detailed timing (12 bits).
const MAX_ACTIVE: u32 = 4095;

/// A detailed timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub width: u32,
    pub height: u32,
    pub h_blank: u32,
    pub v_blank: u32,
    /// In 10 kHz units.
    pub pixel_clock: u32,
    /// Physical size in millimetres.
    pub width_mm: u32,
    pub height_mm: u32,
}

impl Timing {
    /// The timing for a `width` x `height` mode (see the module docs for
    /// modes that don't fit a detailed timing).
    pub fn for_mode(width: u32, height: u32) -> Self {
        let (width, height) = fit(width.max(1), height.max(1));
        let (w, h) = (u64::from(width), u64::from(height));
        // Vertical blanking of at least 460 µs at 60 Hz:
        // lines = ceil(460e-6 * h / (1/60 - 460e-6)).
        let per_frame_us = 1_000_000 / u64::from(REFRESH_HZ);
        let v_blank = (V_BLANK_MIN_US * h).div_ceil(per_frame_us - V_BLANK_MIN_US);
        let v_blank = (v_blank as u32).max(V_FRONT_PORCH + V_SYNC + V_BACK_PORCH_MIN);
        let v_total = h + u64::from(v_blank);
        // Tiny modes get a wider horizontal blank so that the clock reaches
        // the 10 MHz a detailed timing needs (at most 4095 for 32x32).
        let min_total = (MIN_CLOCK_10KHZ * 10_000).div_ceil(u64::from(REFRESH_HZ));
        let h_blank = u64::from(H_BLANK).max(min_total.div_ceil(v_total).saturating_sub(w));
        let total = (w + h_blank) * v_total;
        let mut clock = (total * u64::from(REFRESH_HZ) + 5_000) / 10_000;
        if clock > MAX_CLOCK_10KHZ {
            // The highest whole refresh rate that fits.
            let refresh = (MAX_CLOCK_10KHZ * 10_000 / total).max(1);
            clock = total * refresh / 10_000;
        }
        let mm = |px: u64| ((px * 254 + 480) / 960) as u32;
        Self {
            width,
            height,
            h_blank: h_blank.min(4095) as u32,
            v_blank,
            pixel_clock: clock.clamp(1, MAX_CLOCK_10KHZ) as u32,
            width_mm: mm(w),
            height_mm: mm(h),
        }
    }

    /// The refresh rate in mHz.
    pub fn refresh_mhz(&self) -> u64 {
        let total = u64::from(self.width + self.h_blank) * u64::from(self.height + self.v_blank);
        u64::from(self.pixel_clock) * 10_000 * 1000 / total
    }

    /// The horizontal line rate in Hz.
    fn line_rate_hz(&self) -> u64 {
        u64::from(self.pixel_clock) * 10_000 / u64::from(self.width + self.h_blank)
    }

    /// The 18-byte detailed timing descriptor.
    fn descriptor(&self) -> [u8; 18] {
        let hi = |v: u32, shift: u32| ((v >> 8) & 0xf) << shift;
        let (ha, hb, va, vb) = (self.width, self.h_blank, self.height, self.v_blank);
        let (hso, hsw, vso, vsw) = (H_FRONT_PORCH, H_SYNC, V_FRONT_PORCH, V_SYNC);
        let (wmm, hmm) = (self.width_mm.min(4095), self.height_mm.min(4095));
        let clock = self.pixel_clock.to_le_bytes();
        [
            clock[0],
            clock[1],
            ha as u8,
            hb as u8,
            (hi(ha, 4) | hi(hb, 0)) as u8,
            va as u8,
            vb as u8,
            (hi(va, 4) | hi(vb, 0)) as u8,
            hso as u8,
            hsw as u8,
            (((vso & 0xf) << 4) | (vsw & 0xf)) as u8,
            ((((hso >> 8) & 3) << 6)
                | (((hsw >> 8) & 3) << 4)
                | (((vso >> 4) & 3) << 2)
                | ((vsw >> 4) & 3)) as u8,
            wmm as u8,
            hmm as u8,
            (hi(wmm, 4) | hi(hmm, 0)) as u8,
            0,
            0,
            // Digital separate sync, hsync positive, vsync negative (CVT-RB).
            0x1a,
        ]
    }
}

/// Scales a mode down, keeping its aspect, until both sides fit 12 bits.
fn fit(width: u32, height: u32) -> (u32, u32) {
    let longest = width.max(height);
    if longest <= MAX_ACTIVE {
        return (width, height);
    }
    let scale =
        |v: u32| ((u64::from(v) * u64::from(MAX_ACTIVE) / u64::from(longest)) as u32).max(1);
    (scale(width), scale(height))
}

/// The EDID of scanout `scanout` showing `width` x `height` pixels.
pub fn build(width: u32, height: u32, scanout: u32) -> [u8; EDID_LEN] {
    let timing = Timing::for_mode(width, height);
    let mut e = [0u8; EDID_LEN];
    e[..8].copy_from_slice(&[0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00]);
    e[8..10].copy_from_slice(&manufacturer(*b"PVR").to_be_bytes());
    e[10..12].copy_from_slice(&1u16.to_le_bytes()); // product code
    e[12..16].copy_from_slice(&(scanout + 1).to_le_bytes()); // serial number
    e[16] = 0; // week: unspecified
    e[17] = (2025 - 1990) as u8;
    e[18] = 1; // EDID 1.4
    e[19] = 4;
    e[20] = 0xa5; // digital, 8 bits per colour, DisplayPort
    let cm = |mm: u32| ((mm + 5) / 10).clamp(1, 255) as u8;
    e[21] = cm(timing.width_mm);
    e[22] = cm(timing.height_mm);
    e[23] = 120; // gamma 2.2
                 // Features: sRGB default colour space, the preferred timing is native.
    e[24] = 0x06;
    e[25..35].copy_from_slice(&srgb_chromaticity());
    // Established timings: none. Standard timings: unused (0x01 0x01).
    for i in 0..8 {
        e[38 + 2 * i] = 0x01;
        e[39 + 2 * i] = 0x01;
    }
    e[54..72].copy_from_slice(&timing.descriptor());
    e[72..90].copy_from_slice(&range_limits(&timing));
    e[90..108].copy_from_slice(&text_descriptor(0xfc, MONITOR_NAME));
    // Dummy descriptor.
    e[111] = 0x10;
    e[126] = 0; // no extension blocks
    e[127] = checksum(&e[..127]);
    e
}

/// The byte that makes the block's sum 0 mod 256.
fn checksum(bytes: &[u8]) -> u8 {
    let sum = bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b));
    0u8.wrapping_sub(sum)
}

/// Three letters A-Z packed 5 bits each, 'A' = 1.
fn manufacturer(id: [u8; 3]) -> u16 {
    id.iter()
        .fold(0u16, |acc, &c| (acc << 5) | u16::from(c - b'@'))
}

/// sRGB primaries and D65 white point as EDID's 10-bit fractions.
fn srgb_chromaticity() -> [u8; 10] {
    let v = |x: f64| (x * 1024.0).round() as u16;
    let (rx, ry) = (v(0.640), v(0.330));
    let (gx, gy) = (v(0.300), v(0.600));
    let (bx, by) = (v(0.150), v(0.060));
    let (wx, wy) = (v(0.3127), v(0.3290));
    let lo = |a: u16, b: u16, c: u16, d: u16| {
        (((a & 3) << 6) | ((b & 3) << 4) | ((c & 3) << 2) | (d & 3)) as u8
    };
    [
        lo(rx, ry, gx, gy),
        lo(bx, by, wx, wy),
        (rx >> 2) as u8,
        (ry >> 2) as u8,
        (gx >> 2) as u8,
        (gy >> 2) as u8,
        (bx >> 2) as u8,
        (by >> 2) as u8,
        (wx >> 2) as u8,
        (wy >> 2) as u8,
    ]
}

/// A display range limits descriptor covering `timing`.
fn range_limits(timing: &Timing) -> [u8; 18] {
    let refresh = (timing.refresh_mhz() / 1000) as u32;
    let line_khz = timing.line_rate_hz();
    let min_v = refresh.clamp(1, 50) as u8;
    let max_v = refresh.clamp(75, 255) as u8;
    let min_h = (line_khz / 1000).clamp(1, 255) as u8;
    let max_h = line_khz.div_ceil(1000).clamp(u64::from(min_h), 255) as u8;
    let max_clock = (u64::from(timing.pixel_clock).div_ceil(1000)).clamp(1, 255) as u8;
    let mut d = [0u8; 18];
    d[3] = 0xfd;
    d[5] = min_v;
    d[6] = max_v;
    d[7] = min_h;
    d[8] = max_h;
    d[9] = max_clock;
    d[10] = 0x01; // range limits only, no timing formula
    d[11] = 0x0a;
    d[12..].fill(0x20);
    d
}

/// A display descriptor of type `tag` holding up to 13 bytes of text.
fn text_descriptor(tag: u8, text: &str) -> [u8; 18] {
    let mut d = [0u8; 18];
    d[3] = tag;
    let body = &mut d[5..];
    body.fill(0x20);
    let n = text.len().min(13);
    body[..n].copy_from_slice(&text.as_bytes()[..n]);
    if n < 13 {
        body[n] = 0x0a;
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes the first detailed timing: (h active, h blank, v active,
    /// v blank, pixel clock in 10 kHz, h mm, v mm).
    fn decode_dtd(e: &[u8; EDID_LEN]) -> (u32, u32, u32, u32, u32, u32, u32) {
        let d = &e[54..72];
        let clock = u32::from(u16::from_le_bytes([d[0], d[1]]));
        let ha = u32::from(d[2]) | (u32::from(d[4] >> 4) << 8);
        let hb = u32::from(d[3]) | (u32::from(d[4] & 0xf) << 8);
        let va = u32::from(d[5]) | (u32::from(d[7] >> 4) << 8);
        let vb = u32::from(d[6]) | (u32::from(d[7] & 0xf) << 8);
        let hmm = u32::from(d[12]) | (u32::from(d[14] >> 4) << 8);
        let vmm = u32::from(d[13]) | (u32::from(d[14] & 0xf) << 8);
        (ha, hb, va, vb, clock, hmm, vmm)
    }

    fn sum(e: &[u8]) -> u8 {
        e.iter().fold(0u8, |a, &b| a.wrapping_add(b))
    }

    #[test]
    fn block_is_valid_edid_1_4() {
        let e = build(1280, 800, 0);
        assert_eq!(&e[..8], &[0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0]);
        assert_eq!(sum(&e), 0, "checksum");
        assert_eq!((e[18], e[19]), (1, 4));
        assert_ne!(e[20] & 0x80, 0, "digital input");
        // "PVR" = 16, 22, 18.
        assert_eq!(
            u16::from_be_bytes([e[8], e[9]]),
            (16 << 10) | (22 << 5) | 18
        );
        assert_eq!(e[126], 0);
        // Descriptors 2-4 are display descriptors (zero pixel clock).
        for off in [72, 90, 108] {
            assert_eq!(&e[off..off + 3], &[0, 0, 0]);
        }
        assert_eq!(e[75], 0xfd);
        assert_eq!(e[93], 0xfc);
        assert_eq!(&e[95..108], b"PearVisor\n   ");
        assert_eq!(e[111], 0x10);
        // 338.7 x 211.7 mm at 96 DPI.
        assert_eq!((e[21], e[22]), (34, 21));
    }

    #[test]
    fn preferred_timing_is_the_mode_at_60_hz() {
        for (w, h) in [
            (1280, 800),
            (1920, 1080),
            (1024, 768),
            (32, 32),
            (3840, 2160),
            (4095, 4095),
        ] {
            let e = build(w, h, 2);
            assert_eq!(sum(&e), 0);
            let (ha, hb, va, vb, clock, hmm, vmm) = decode_dtd(&e);
            assert_eq!((ha, va), (w, h));
            assert!(clock >= 1000, "{w}x{h}: pixel clock under 10 MHz");
            if w >= 640 {
                assert_eq!(hb, 160);
            }
            assert!(vb >= 15);
            // Vertical blanking of at least 460 µs.
            let line_us = (ha + hb) as f64 / (clock as f64 * 10_000.0) * 1e6;
            assert!(vb as f64 * line_us >= 460.0 * 0.99, "{w}x{h}: {vb} lines");
            let refresh = clock as f64 * 10_000.0 / ((ha + hb) as f64 * (va + vb) as f64);
            if w * h <= 3840 * 2160 {
                assert!((refresh - 60.0).abs() < 0.5, "{w}x{h}: {refresh} Hz");
            } else {
                assert!(refresh > 30.0 && refresh <= 60.0, "{w}x{h}: {refresh} Hz");
            }
            assert_eq!(hmm, (w * 254 + 480) / 960);
            assert_eq!(vmm, (h * 254 + 480) / 960);
            // Range limits cover the timing.
            let (min_v, max_v, min_h, max_h, max_clk) = (e[77], e[78], e[79], e[80], e[81]);
            assert!(f64::from(min_v) <= refresh.floor() && refresh <= f64::from(max_v));
            let line_khz = clock as f64 * 10.0 / f64::from(ha + hb);
            assert!(f64::from(min_h) <= line_khz && line_khz <= f64::from(max_h));
            assert!(u32::from(max_clk) * 1000 >= clock);
            assert_eq!(u32::from_le_bytes(e[12..16].try_into().unwrap()), 3);
        }
        // 1920x1080 reduced blanking: 2080 x 1111 at 60 Hz = 138.65 MHz.
        let t = Timing::for_mode(1920, 1080);
        assert_eq!((t.v_blank, t.pixel_clock), (31, 13865));
    }

    #[test]
    fn oversized_modes_are_scaled_to_fit() {
        let e = build(8192, 4608, 0);
        assert_eq!(sum(&e), 0);
        let (ha, _, va, _, clock, _, _) = decode_dtd(&e);
        assert_eq!((ha, va), (4095, 2303));
        assert!(clock <= 0xffff);
        let (ha, _, va, _, _, _, _) = decode_dtd(&build(4096, 8192, 0));
        assert_eq!((ha, va), (2047, 4095));
    }
}
