//! The web viewer in a real browser: headless Chromium driven through
//! chromedriver (pv-testkit's WebDriver client). The
//! page's canvas must equal the screenshot, pixel for pixel, through both
//! raw and PNG rectangles; keys typed and mouse moves and clicks in the
//! page must reach the input sink; with "fit guest to window" on, the
//! guest must be asked for the size of the page's canvas area.
//!
//! Needs Debian's `chromium` and `chromium-driver` (scripts/setup-host.sh
//! installs them); fails without them.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pv_display::{
    CursorImage, Display, FrameView, InputEvent, InputSink, PixelFormat, Rect, ResizeSink,
    ScanoutSink, WebViewer,
};
use pv_testkit::webdriver::{Browser, TIMEOUT};
use serde_json::json;

#[derive(Default)]
struct Recorder(Mutex<Vec<InputEvent>>);

impl InputSink for Recorder {
    fn send(&self, event: InputEvent) {
        self.0.lock().unwrap().push(event);
    }
}

impl Recorder {
    fn take(&self) -> Vec<InputEvent> {
        std::mem::take(&mut self.0.lock().unwrap())
    }

    /// Waits until what arrived satisfies `done`, and takes it.
    fn wait(&self, what: &str, done: impl Fn(&[InputEvent]) -> bool) -> Vec<InputEvent> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            {
                let mut got = self.0.lock().unwrap();
                if done(&got) {
                    return std::mem::take(&mut got);
                }
                assert!(Instant::now() < deadline, "{what}: only {:?} arrived", *got);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The canvas of `scanout` as RGBA, or None before it has the size.
fn canvas(b: &Browser, scanout: u32, w: u32, h: u32) -> Option<Vec<u8>> {
    b.canvas_rgba(&format!("display-{scanout}"), w, h).unwrap()
}

fn decode_png(data: &[u8]) -> Vec<u8> {
    let mut reader = png::Decoder::new(std::io::Cursor::new(data))
        .read_info()
        .unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf[..info.buffer_size()]
        .chunks_exact(3)
        .flat_map(|p| [p[0], p[1], p[2], 255])
        .collect()
}

/// A B8G8R8X8 test picture: gradients, a seed-coloured band, text-like
/// noise (so PNG and raw both have work).
fn picture(w: u32, h: u32, seed: u8) -> Vec<u8> {
    let mut data = Vec::with_capacity((w * h * 4) as usize);
    for y in 0..h {
        for x in 0..w {
            let noise = ((x * 7 + y * 13) ^ (x * y)) as u8;
            let band = if (y / 8) % 3 == 0 { seed } else { noise };
            data.extend_from_slice(&[band, (y * 255 / h) as u8, (x * 255 / w) as u8, 0]);
        }
    }
    data
}

fn push(display: &Display, w: u32, h: u32, seed: u8, damage: Rect) {
    let data = picture(w, h, seed);
    let view = FrameView {
        width: w,
        height: h,
        stride: w * 4,
        format: PixelFormat::B8G8R8X8,
        data: &data,
    };
    display.update(0, &view, damage);
}

fn wait_canvas_equals_screenshot(b: &Browser, display: &Display, w: u32, h: u32, what: &str) {
    let want = decode_png(&display.screenshot(0).unwrap());
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(got) = canvas(b, 0, w, h) {
            if got == want {
                return;
            }
            if Instant::now() >= deadline {
                let diff = got.iter().zip(&want).position(|(a, b)| a != b);
                panic!("{what}: the canvas differs from the screenshot (first at byte {diff:?})");
            }
        }
        assert!(Instant::now() < deadline, "{what}: no canvas");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_page_draws_the_screen_and_sends_input() {
    // The viewer's thread runs under its syscall filter, as in the VMM.
    pv_seccomp::set_mode(pv_seccomp::SeccompMode::Kill);
    let (w, h) = (320, 200);
    let display = Arc::new(Display::new(1));
    display.set_mode(0, Some((w, h)));
    push(&display, w, h, 0x40, Rect::new(0, 0, w, h));
    let recorder = Arc::new(Recorder::default());
    let viewer = WebViewer::start(
        "127.0.0.1:0".parse().unwrap(),
        display.clone(),
        Some(recorder.clone() as Arc<dyn InputSink>),
    )
    .unwrap();
    let b = Browser::start().unwrap();
    b.navigate(&format!("http://{}/", viewer.local_addr()))
        .unwrap();

    // The first frame (a PNG under the default encoding), then a large
    // damaged rectangle (PNG) and a small one (raw).
    wait_canvas_equals_screenshot(&b, &display, w, h, "first frame");
    push(&display, w, h, 0x80, Rect::new(20, 30, 200, 100));
    wait_canvas_equals_screenshot(&b, &display, w, h, "large damage");
    push(&display, w, h, 0xc0, Rect::new(300, 190, 5, 4));
    wait_canvas_equals_screenshot(&b, &display, w, h, "small damage");

    // The cursor is an overlay at the guest's position (hot spot applied).
    let cursor = CursorImage {
        width: 4,
        height: 4,
        hot_x: 2,
        hot_y: 1,
        rgba: [255, 0, 0, 255].repeat(16),
    };
    display.set_cursor(0, Some(&cursor));
    display.move_cursor(0, 100, 50);
    b.wait_script(
        "cursor overlay",
        "const c = document.querySelector('canvas.cursor');
         return !c.hidden && c.width === 4 && /translate\\(98px, 49px\\)/.test(c.style.transform);",
        TIMEOUT,
    )
    .unwrap();

    // Keys typed into the focused canvas.
    let canvas = b.element("#display-0").unwrap();
    b.click(&canvas).unwrap();
    recorder.wait("the click", |e| {
        e.contains(&InputEvent::Button {
            code: 0x110,
            pressed: false,
        })
    });
    let key_actions = json!({"actions": [{"type": "key", "id": "kbd", "actions": [
        {"type": "keyDown", "value": "a"}, {"type": "keyUp", "value": "a"},
        {"type": "keyDown", "value": "\u{E008}"},  // Shift
        {"type": "keyDown", "value": "1"}, {"type": "keyUp", "value": "1"},
        {"type": "keyUp", "value": "\u{E008}"},
        {"type": "keyDown", "value": "\u{E006}"}, {"type": "keyUp", "value": "\u{E006}"},  // Return (code Enter)
        {"type": "keyDown", "value": "\u{E003}"}, {"type": "keyUp", "value": "\u{E003}"},  // Backspace
        {"type": "keyDown", "value": "\u{E013}"}, {"type": "keyUp", "value": "\u{E013}"},  // ArrowUp
    ]}]});
    b.actions(key_actions).unwrap();
    let key = |code, pressed| InputEvent::Key { code, pressed };
    let want = vec![
        key(30, true),
        key(30, false),
        key(42, true),
        key(2, true),
        key(2, false),
        key(42, false),
        key(28, true),
        key(28, false),
        key(14, true),
        key(14, false),
        key(103, true),
        key(103, false),
    ];
    let got = recorder.wait("the keys", |e| e.len() >= want.len());
    assert_eq!(got, want);

    // The mouse: a move to a known canvas pixel, a right click, the wheel.
    let [left, top, width, _] = b.rect_of("#display-0").unwrap();
    assert_eq!(width, f64::from(w), "not scaled at this size");
    let (px, py) = (57, 33);
    let mouse = json!({"actions": [{"type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"}, "actions": [
        {"type": "pointerMove", "origin": "viewport", "x": (left + f64::from(px)).ceil() as i64, "y": (top + f64::from(py)).ceil() as i64},
        {"type": "pointerDown", "button": 2}, {"type": "pointerUp", "button": 2},
    ]}]});
    b.actions(mouse).unwrap();
    let got = recorder.wait("the right click", |e| {
        e.contains(&InputEvent::Button {
            code: 0x111,
            pressed: false,
        })
    });
    let moves: Vec<(u32, u32)> = got
        .iter()
        .filter_map(|e| match *e {
            InputEvent::PointerMove { scanout: 0, x, y } => Some((x, y)),
            _ => None,
        })
        .collect();
    let (x, y) = *moves.last().unwrap();
    assert!(
        x.abs_diff(px) <= 1 && y.abs_diff(py) <= 1,
        "pointer at ({x}, {y}), want ({px}, {py})"
    );
    assert!(got.contains(&InputEvent::Button {
        code: 0x111,
        pressed: true
    }));
    let wheel = json!({"actions": [{"type": "wheel", "id": "wheel", "actions": [
        {"type": "scroll", "x": (left + 10.0) as i64, "y": (top + 10.0) as i64, "deltaX": 0, "deltaY": -200, "origin": "viewport"},
    ]}]});
    b.actions(wheel).unwrap();
    let got = recorder.wait("the wheel", |e| {
        e.iter()
            .filter(|e| matches!(e, InputEvent::Wheel { .. }))
            .count()
            >= 2
    });
    assert!(got
        .iter()
        .filter(|e| matches!(e, InputEvent::Wheel { .. }))
        .all(|e| *e == InputEvent::Wheel { delta: 1 }));

    // The canvas is the screen without the cursor (an overlay): with the
    // cursor hidden it equals the screenshot.
    display.set_cursor(0, None);
    b.wait_script(
        "cursor hidden",
        "return document.querySelector('canvas.cursor').hidden;",
        TIMEOUT,
    )
    .unwrap();
    // A mode change resizes the canvas, which then shows the new frame.
    display.set_mode(0, Some((200, 120)));
    push(&display, 200, 120, 0x11, Rect::new(0, 0, 200, 120));
    wait_canvas_equals_screenshot(&b, &display, 200, 120, "after the mode change");

    if let Ok(path) = std::env::var("PV_BROWSER_SCREENSHOT") {
        std::fs::write(path, b.screenshot_png().unwrap()).unwrap();
    }
    recorder.take();
    drop(b);
    // The browser going away is a viewer disconnecting: harmless.
    let deadline = Instant::now() + TIMEOUT;
    while viewer.viewers() != 0 {
        assert!(
            Instant::now() < deadline,
            "the viewer did not notice the browser leaving"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    viewer.stop();
}

/// A `ResizeSink` that records what the guest is asked.
#[derive(Default)]
struct Resizes(Mutex<Vec<(u32, u32, u32)>>);

impl ResizeSink for Resizes {
    fn request_size(&self, scanout: u32, width: u32, height: u32) -> Result<(), String> {
        self.0.lock().unwrap().push((scanout, width, height));
        Ok(())
    }
}

impl Resizes {
    fn take(&self) -> Vec<(u32, u32, u32)> {
        std::mem::take(&mut self.0.lock().unwrap())
    }

    /// Waits for a request, then for the page's debounce to pass, and
    /// takes everything asked.
    fn wait(&self, what: &str) -> Vec<(u32, u32, u32)> {
        let deadline = Instant::now() + TIMEOUT;
        while self.0.lock().unwrap().is_empty() {
            assert!(Instant::now() < deadline, "{what}: nothing asked");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(QUIET);
        self.take()
    }

    /// Nothing is asked for a while (longer than the page's debounce).
    fn expect_none(&self, what: &str) {
        std::thread::sleep(QUIET);
        assert_eq!(self.take(), vec![], "{what}");
    }
}

/// Longer than the page waits before asking (300 ms).
const QUIET: Duration = Duration::from_millis(900);

/// The room below the page's header, less the screens' padding (8 px on
/// the sides and below, 22 px above for the label), in device pixels
/// (the browser runs at scale factor 1): measured from the window's
/// inner size, so scroll bars would show as a mismatch.
fn canvas_area(b: &Browser) -> (u32, u32) {
    let v = b
        .script(
            "const header = document.querySelector('header').getBoundingClientRect();
             return [window.innerWidth - 16, window.innerHeight - Math.round(header.bottom) - 30];",
        )
        .unwrap();
    let n = |i: usize| v[i].as_u64().unwrap() as u32;
    (n(0), n(1))
}

fn set_window(b: &Browser, width: u32, height: u32) {
    b.cmd(
        "POST",
        "/window/rect",
        Some(json!({"width": width, "height": height})),
    )
    .unwrap();
}

#[test]
fn fit_guest_to_window_asks_the_guest_for_the_canvas_area() {
    let display = Arc::new(Display::new(1));
    display.set_mode(0, Some((320, 200)));
    push(&display, 320, 200, 0x40, Rect::new(0, 0, 320, 200));
    let resizes = Arc::new(Resizes::default());
    display.connect_resizer(Some(resizes.clone() as Arc<dyn ResizeSink>));
    let viewer = WebViewer::start(
        "127.0.0.1:0".parse().unwrap(),
        display.clone(),
        Some(Arc::new(Recorder::default()) as Arc<dyn InputSink>),
    )
    .unwrap();
    let url = format!("http://{}/", viewer.local_addr());
    let b = Browser::start().unwrap();
    b.navigate(&url).unwrap();
    wait_canvas_equals_screenshot(&b, &display, 320, 200, "first frame");

    // Off by default: the guest keeps its size.
    let checked = || {
        b.script("return document.getElementById('fit-guest').checked;")
            .unwrap()
    };
    assert_eq!(checked(), json!(false));
    resizes.expect_none("fit guest is off by default");

    // On: the guest is asked for the canvas area.
    b.click(&b.element("#fit-guest").unwrap()).unwrap();
    let (w, h) = canvas_area(&b);
    assert_eq!(
        b.script("return window.pvCanvasArea();").unwrap(),
        json!({"width": w, "height": h})
    );
    assert_eq!(resizes.wait("turned on"), vec![(0, w, h)]);

    // The browser window resized: once, for the new area.
    set_window(&b, 1000, 720);
    b.wait_script(
        "the window resized",
        "return window.innerWidth > 900;",
        TIMEOUT,
    )
    .unwrap();
    let (w2, h2) = canvas_area(&b);
    assert!(w2 > w && h2 > h, "{w2}x{h2} after {w}x{h}");
    assert_eq!(resizes.wait("the window resized"), vec![(0, w2, h2)]);

    // The guest switches: the canvas fills the area 1:1, no scroll bars,
    // and nothing more is asked.
    display.set_mode(0, Some((w2, h2)));
    push(&display, w2, h2, 0x22, Rect::new(0, 0, w2, h2));
    wait_canvas_equals_screenshot(&b, &display, w2, h2, "the guest at the window's size");
    let [_, _, cw, ch] = b.rect_of("#display-0").unwrap();
    assert_eq!((cw, ch), (f64::from(w2), f64::from(h2)), "shown 1:1");
    assert_eq!(
        b.script(
            "const de = document.documentElement;
             return de.scrollWidth <= de.clientWidth && de.scrollHeight <= de.clientHeight;"
        )
        .unwrap(),
        json!(true),
        "no scroll bars"
    );
    assert_eq!(canvas_area(&b), (w2, h2));
    resizes.expect_none("the guest fits");

    // Remembered across a reload; the guest already fits, nothing asked.
    b.navigate(&url).unwrap();
    wait_canvas_equals_screenshot(&b, &display, w2, h2, "after the reload");
    assert_eq!(checked(), json!(true));
    resizes.expect_none("reloaded with the guest fitting");

    // Off: resizing the window asks nothing.
    b.click(&b.element("#fit-guest").unwrap()).unwrap();
    assert_eq!(checked(), json!(false));
    set_window(&b, 800, 600);
    b.wait_script(
        "the window resized back",
        "return window.innerWidth < 900;",
        TIMEOUT,
    )
    .unwrap();
    resizes.expect_none("fit guest is off");
    drop(b);
    viewer.stop();
}
