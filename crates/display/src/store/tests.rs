//! Unit tests of the headless display store.
use super::*;
use crate::encode::tests::decode_rgba;
use crate::PixelFormat;
use std::sync::atomic::AtomicUsize;

/// A `w` x `h` B8G8R8X8 frame whose pixel (x, y) is blue x, green y, red
/// x ^ y, padding 0x77; `stride` bytes a row.
fn bgrx(w: u32, h: u32, stride: u32, seed: u8) -> Vec<u8> {
    let mut data = vec![0xee; (stride * h) as usize];
    for y in 0..h {
        for x in 0..w {
            let i = (y * stride + x * 4) as usize;
            data[i..i + 4].copy_from_slice(&[x as u8, y as u8, (x ^ y) as u8 ^ seed, 0x77]);
        }
    }
    data
}

/// What `bgrx` shows, as opaque RGBA.
fn expected_rgba(x: u32, y: u32, seed: u8) -> [u8; 4] {
    [(x ^ y) as u8 ^ seed, y as u8, x as u8, 255]
}

fn view(w: u32, h: u32, stride: u32, data: &[u8]) -> FrameView<'_> {
    FrameView {
        width: w,
        height: h,
        stride,
        format: PixelFormat::B8G8R8X8,
        data,
    }
}

fn pixel(f: &Frame, x: u32, y: u32) -> [u8; 4] {
    let i = ((y * f.width + x) * 4) as usize;
    [f.rgba[i], f.rgba[i + 1], f.rgba[i + 2], f.rgba[i + 3]]
}

fn shown(w: u32, h: u32) -> Display {
    let d = Display::new(1);
    d.set_mode(0, Some((w, h)));
    let data = bgrx(w, h, w * 4, 0);
    d.update(0, &view(w, h, w * 4, &data), Rect::new(0, 0, w, h));
    d
}

#[test]
fn bad_scanouts_are_errors_with_clear_messages() {
    let d = Display::new(1);
    let e = d.screenshot(1).unwrap_err();
    assert_eq!(e.to_string(), "display 1 does not exist (the VM has 1)");
    let e = d.screenshot(0).unwrap_err();
    assert_eq!(e.to_string(), "display 0 shows nothing yet");
    d.set_mode(0, Some((4, 4)));
    assert!(matches!(d.frame(0), Err(DisplayError::NothingShown(0))));
    let d = shown(4, 4);
    assert!(d.screenshot(0).is_ok());
    d.set_mode(0, None);
    assert!(matches!(
        d.screenshot(0),
        Err(DisplayError::NothingShown(0))
    ));
}

#[test]
fn screenshot_decodes_to_the_pushed_pixels() {
    let (w, h) = (33, 17);
    let d = shown(w, h);
    let (pw, ph, rgba) = decode_rgba(&d.screenshot(0).unwrap());
    assert_eq!((pw, ph), (w, h));
    let want: Vec<u8> = (0..h)
        .flat_map(|y| (0..w).flat_map(move |x| expected_rgba(x, y, 0)))
        .collect();
    assert_eq!(rgba, want);
    assert_eq!(d.frame(0).unwrap().rgba, want);
}

#[test]
fn damage_updates_only_its_rect_and_honours_stride() {
    let (w, h) = (16, 12);
    let d = shown(w, h);
    let stride = w * 4 + 12;
    let data = bgrx(w, h, stride, 0xff);
    let rect = Rect::new(3, 4, 5, 6);
    d.update(0, &view(w, h, stride, &data), rect);
    let f = d.frame(0).unwrap();
    for y in 0..h {
        for x in 0..w {
            let inside = (3..8).contains(&x) && (4..10).contains(&y);
            let want = expected_rgba(x, y, if inside { 0xff } else { 0 });
            assert_eq!(pixel(&f, x, y), want, "({x}, {y})");
        }
    }
}

#[test]
fn hostile_frames_are_clipped_not_trusted() {
    let d = shown(8, 8);
    let before = d.frame(0).unwrap();
    // Damage outside the mode, and a frame larger than the mode.
    let big = bgrx(64, 64, 256, 1);
    d.update(0, &view(64, 64, 256, &big), Rect::new(8, 8, 100, 100));
    d.update(
        0,
        &view(64, 64, 256, &big),
        Rect::new(u32::MAX, 0, u32::MAX, 1),
    );
    assert_eq!(d.frame(0).unwrap(), before);
    // Data shorter than the frame claims: the rows present are taken.
    let short = bgrx(8, 8, 32, 2);
    d.update(
        0,
        &view(8, 8, 32, &short[..32 * 3 + 5]),
        Rect::new(0, 0, 8, 8),
    );
    let f = d.frame(0).unwrap();
    assert_eq!(pixel(&f, 1, 2), expected_rgba(1, 2, 2));
    assert_eq!(pixel(&f, 1, 3), expected_rgba(1, 3, 0));
    // A frame smaller than the mode.
    let small = bgrx(2, 2, 8, 3);
    d.update(0, &view(2, 2, 8, &small), Rect::new(0, 0, 8, 8));
    assert_eq!(pixel(&d.frame(0).unwrap(), 1, 1), expected_rgba(1, 1, 3));
    // Updates to missing or disabled scanouts are ignored.
    d.update(5, &view(2, 2, 8, &small), Rect::new(0, 0, 2, 2));
    d.set_mode(0, None);
    d.update(0, &view(2, 2, 8, &small), Rect::new(0, 0, 2, 2));
    assert!(d.frame(0).is_err());
}

#[test]
fn oversize_modes_are_refused() {
    let d = shown(8, 8);
    d.set_mode(0, Some((MAX_DIMENSION + 1, 8)));
    d.set_mode(0, Some((8, u32::MAX)));
    assert_eq!(d.mode(0), Some((8, 8)));
    assert!(d.frame(0).is_ok());

    let d = Display::with_pixel_budget(2, 100);
    d.set_mode(0, Some((10, 8)));
    d.set_mode(1, Some((5, 5)));
    assert_eq!(d.mode(1), None, "over the budget");
    d.set_mode(1, Some((5, 4)));
    assert_eq!(d.mode(1), Some((5, 4)));
    // Resizing within the budget, counting what the scanout gives back.
    d.set_mode(0, Some((8, 10)));
    assert_eq!(d.mode(0), Some((8, 10)));
    d.set_mode(0, None);
    d.set_mode(1, Some((10, 10)));
    assert_eq!(d.mode(1), Some((10, 10)));
    // A zero-sized mode is off.
    d.set_mode(1, Some((0, 10)));
    assert_eq!(d.mode(1), None);
}

#[test]
fn scanouts_are_listed() {
    let d = Display::new(2);
    d.set_mode(1, Some((640, 480)));
    let data = vec![0; 640 * 480 * 4];
    d.update(1, &view(640, 480, 2560, &data), Rect::new(0, 0, 1, 1));
    assert_eq!(
        d.scanouts(),
        vec![
            ScanoutInfo {
                id: 0,
                width: 0,
                height: 0,
                enabled: false,
                frames: 0
            },
            ScanoutInfo {
                id: 1,
                width: 640,
                height: 480,
                enabled: true,
                frames: 1
            },
        ]
    );
    assert_eq!(Display::new(100).count(), MAX_SCANOUTS);
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
fn screenshot_composites_the_cursor() {
    let d = shown(20, 10);
    d.set_cursor(0, Some(&cursor(4, 4, (1, 2), [255, 255, 255, 255])));
    d.move_cursor(0, 18, 8);
    let (_, _, rgba) = decode_rgba(&d.screenshot(0).unwrap());
    let at = |x: u32, y: u32| {
        let i = ((y * 20 + x) * 4) as usize;
        [rgba[i], rgba[i + 1], rgba[i + 2], rgba[i + 3]]
    };
    // The image spans x 17..21, y 6..10: clipped at the right edge.
    for y in 0..10 {
        for x in 0..20 {
            let inside = (17..21).contains(&x) && (6..10).contains(&y);
            let want = if inside {
                [255, 255, 255, 255]
            } else {
                expected_rgba(x, y, 0)
            };
            assert_eq!(at(x, y), want, "({x}, {y})");
        }
    }
    // frame() is without the cursor; hiding it clears it from screenshots.
    assert_eq!(pixel(&d.frame(0).unwrap(), 18, 8), expected_rgba(18, 8, 0));
    d.set_cursor(0, None);
    assert_eq!(d.composited_frame(0).unwrap(), d.frame(0).unwrap());
}

#[test]
fn bad_cursors_are_refused() {
    let d = shown(4, 4);
    d.set_cursor(0, Some(&cursor(2, 2, (0, 0), [1, 1, 1, 255])));
    let mut bad = cursor(2, 2, (0, 0), [9, 9, 9, 255]);
    bad.rgba.push(0);
    d.set_cursor(0, Some(&bad));
    d.set_cursor(
        0,
        Some(&cursor(MAX_CURSOR_DIMENSION + 1, 1, (0, 0), [9; 4])),
    );
    d.move_cursor(0, 0, 0);
    assert_eq!(pixel(&d.composited_frame(0).unwrap(), 0, 0), [1, 1, 1, 255]);
}

fn counting() -> (Arc<AtomicUsize>, Box<dyn Fn() + Send + Sync>) {
    let n = Arc::new(AtomicUsize::new(0));
    let m = n.clone();
    (
        n,
        Box::new(move || {
            m.fetch_add(1, Ordering::SeqCst);
        }),
    )
}

#[test]
fn a_new_subscriber_gets_everything() {
    let d = shown(4, 3);
    d.set_cursor(0, Some(&cursor(1, 1, (0, 0), [1, 2, 3, 4])));
    d.move_cursor(0, 2, 1);
    let (_, wake) = counting();
    let sub = d.subscribe(wake);
    let u = d.updates(&sub);
    assert_eq!(
        u[0],
        Update::Mode {
            scanout: 0,
            mode: Some((4, 3))
        }
    );
    assert_eq!(
        u[1],
        Update::Pixels {
            scanout: 0,
            rect: Rect::new(0, 0, 4, 3),
            rgba: d.frame(0).unwrap().rgba
        }
    );
    assert_eq!(
        u[2],
        Update::Cursor {
            scanout: 0,
            image: Some(cursor(1, 1, (0, 0), [1, 2, 3, 4]))
        }
    );
    assert_eq!(
        u[3],
        Update::CursorMove {
            scanout: 0,
            x: 2,
            y: 1
        }
    );
    assert_eq!(u.len(), 4);
    assert!(d.updates(&sub).is_empty());
}

#[test]
fn damage_coalesces_for_a_slow_subscriber() {
    let (w, h) = (64, 32);
    let d = shown(w, h);
    let (wakes, wake) = counting();
    let sub = d.subscribe(wake);
    d.updates(&sub);
    // Many frames while the subscriber does not look: one wake, and the
    // pixels fetched are the last frame's.
    for seed in 1..=50u8 {
        let data = bgrx(w, h, w * 4, seed);
        d.update(0, &view(w, h, w * 4, &data), Rect::new(2, 3, 10, 5));
        d.update(0, &view(w, h, w * 4, &data), Rect::new(40, 20, 4, 4));
    }
    assert_eq!(wakes.load(Ordering::SeqCst), 1);
    let u = d.updates(&sub);
    assert_eq!(u.len(), 2);
    for (update, rect) in u
        .iter()
        .zip([Rect::new(2, 3, 10, 5), Rect::new(40, 20, 4, 4)])
    {
        let Update::Pixels {
            rect: got,
            rgba,
            scanout: 0,
        } = update
        else {
            panic!("{update:?}");
        };
        assert_eq!(*got, rect);
        let want: Vec<u8> = (rect.y..rect.y + rect.height)
            .flat_map(|y| (rect.x..rect.x + rect.width).flat_map(move |x| expected_rgba(x, y, 50)))
            .collect();
        assert_eq!(rgba, &want);
    }
    // Next change wakes again.
    d.move_cursor(0, 1, 1);
    assert_eq!(wakes.load(Ordering::SeqCst), 2);
    assert_eq!(
        d.updates(&sub),
        vec![Update::CursorMove {
            scanout: 0,
            x: 1,
            y: 1
        }]
    );
    // The same position again is no change.
    d.move_cursor(0, 1, 1);
    assert!(d.updates(&sub).is_empty());
}

#[test]
fn a_mode_change_replaces_pending_damage_with_a_full_frame() {
    let d = shown(8, 8);
    let (_, wake) = counting();
    let sub = d.subscribe(wake);
    d.updates(&sub);
    let data = bgrx(8, 8, 32, 9);
    d.update(0, &view(8, 8, 32, &data), Rect::new(0, 0, 2, 2));
    d.set_mode(0, Some((4, 4)));
    assert_eq!(
        d.updates(&sub),
        vec![Update::Mode {
            scanout: 0,
            mode: Some((4, 4))
        }],
        "nothing shown at the new size yet"
    );
    let data = bgrx(4, 4, 16, 1);
    d.update(0, &view(4, 4, 16, &data), Rect::new(1, 1, 1, 1));
    d.set_mode(0, None);
    assert_eq!(
        d.updates(&sub),
        vec![Update::Mode {
            scanout: 0,
            mode: None
        }]
    );
    // Same mode twice is no change.
    d.set_mode(0, None);
    assert!(d.updates(&sub).is_empty());
}

#[test]
fn dropped_subscriptions_are_forgotten() {
    let d = shown(2, 2);
    let (wakes, wake) = counting();
    let sub = d.subscribe(wake);
    let (_, wake2) = counting();
    let sub2 = d.subscribe(wake2);
    assert_eq!(d.subscribers(), 2);
    drop(sub);
    assert_eq!(d.subscribers(), 1);
    d.move_cursor(0, 1, 1);
    assert_eq!(wakes.load(Ordering::SeqCst), 0);
    assert!(!d.updates(&sub2).is_empty());
}

#[test]
fn updates_from_another_thread_reach_a_subscriber() {
    let d = Arc::new(shown(32, 32));
    let (tx, rx) = std::sync::mpsc::channel();
    let sub = d.subscribe(Box::new(move || {
        let _ = tx.send(());
    }));
    d.updates(&sub);
    let d2 = d.clone();
    let t = std::thread::spawn(move || {
        for seed in 0..200u8 {
            let data = bgrx(32, 32, 128, seed);
            d2.update(0, &view(32, 32, 128, &data), Rect::new(0, 0, 32, 32));
        }
    });
    let mut last = None;
    while last != Some(expected_rgba(0, 0, 199)) {
        rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        for u in d.updates(&sub) {
            if let Update::Pixels { rgba, .. } = u {
                last = Some([rgba[0], rgba[1], rgba[2], rgba[3]]);
            }
        }
    }
    t.join().unwrap();
}

/// A `ResizeSink` that records requests and refuses `refuse`.
#[derive(Default)]
struct Resizes {
    got: Mutex<Vec<(u32, u32, u32)>>,
    refuse: Option<(u32, u32)>,
}

impl ResizeSink for Resizes {
    fn request_size(&self, scanout: u32, width: u32, height: u32) -> Result<(), String> {
        if self.refuse == Some((width, height)) {
            return Err("no".into());
        }
        lock(&self.got).push((scanout, width, height));
        Ok(())
    }
}

#[test]
fn size_requests_go_to_the_connected_gpu() {
    let d = Display::new(2);
    assert!(!d.has_resizer());
    let err = d.request_size(0, 800, 600).unwrap_err();
    assert!(matches!(err, DisplayError::NoResizer(0)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "cannot resize display 0: no GPU is connected to ask the guest"
    );

    let gpu = Arc::new(Resizes {
        refuse: Some((999, 999)),
        ..Default::default()
    });
    d.connect_resizer(Some(gpu.clone()));
    assert!(d.has_resizer());
    d.request_size(1, 800, 600).unwrap();
    d.request_size(0, 32, 8192).unwrap();
    d.request_size(0, 8192, 32).unwrap();
    // The store's mode changes only when the guest switches.
    assert_eq!(d.mode(1), None);

    for (w, h) in [
        (31, 600),
        (800, 31),
        (0, 0),
        (8193, 600),
        (800, 8193),
        (u32::MAX, u32::MAX),
    ] {
        let err = d.request_size(0, w, h).unwrap_err();
        assert!(
            matches!(err, DisplayError::BadSize { .. }),
            "{w}x{h}: {err:?}"
        );
    }
    assert_eq!(
        d.request_size(0, 10, 600).unwrap_err().to_string(),
        "cannot resize display 0 to 10x600: sizes go from 32 to 8192 on a side"
    );
    assert!(matches!(
        d.request_size(2, 800, 600),
        Err(DisplayError::NoSuchDisplay { index: 2, count: 2 })
    ));
    assert!(matches!(
        d.request_size(u32::MAX, 800, 600),
        Err(DisplayError::NoSuchDisplay { .. })
    ));
    let err = d.request_size(1, 999, 999).unwrap_err();
    assert_eq!(err.to_string(), "the GPU refused to resize display 1: no");
    assert_eq!(
        *lock(&gpu.got),
        vec![(1, 800, 600), (0, 32, 8192), (0, 8192, 32)]
    );

    // Another GPU's disconnection leaves this one connected.
    let other: Arc<dyn ResizeSink> = Arc::new(Resizes::default());
    d.disconnect_resizer(&other);
    assert!(d.has_resizer());
    // Disconnected (the machine is gone): refused again.
    d.disconnect_resizer(&(gpu.clone() as Arc<dyn ResizeSink>));
    assert!(!d.has_resizer());
    assert!(matches!(
        d.request_size(0, 800, 600),
        Err(DisplayError::NoResizer(0))
    ));
    assert_eq!(lock(&gpu.got).len(), 3);
    d.connect_resizer(Some(gpu.clone()));
    assert!(d.has_resizer());
    d.connect_resizer(None);
    assert!(!d.has_resizer());
}
