//! The native window on a real X server: Xvfb (a virtual X server, no GPU
//! needed), the window's pixels read back with `xwd`, input typed and
//! moved with `xdotool` (XTEST, the same path as a real keyboard and mouse).
//!
//! Each test runs in a child process of this test binary with its own Xvfb
//! on a free display number (`Xvfb -displayfd`): winit allows one event loop
//! per process, and the child gets `DISPLAY` without this process changing
//! its environment. Without Xvfb the tests say so and pass (skipped);
//! `scripts/setup-host.sh` installs Xvfb, xwd (x11-apps) and xdotool, and
//! with Xvfb present a missing xwd or xdotool fails the test.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pv_display::window::scale::Viewport;
use pv_display::window::RESIZE_SETTLE;
use pv_display::{
    CursorImage, Display, FrameView, InputEvent, InputSink, PixelFormat, Rect, ResizeSink,
    ScanoutSink, WindowViewer,
};

/// Set in the child: the X display it runs against.
const CHILD_ENV: &str = "PV_WINDOW_TEST_DISPLAY";
const WAIT: Duration = Duration::from_secs(15);

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A private Xvfb, killed when dropped.
struct Xvfb {
    child: Child,
    display: String,
}

impl Xvfb {
    fn start() -> Xvfb {
        let mut child = Command::new("Xvfb")
            .args([
                "-displayfd",
                "1",
                "-screen",
                "0",
                "1024x768x24",
                "-nolisten",
                "tcp",
                "-noreset",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start Xvfb");
        // Xvfb picks a free display number and writes it once it accepts
        // connections.
        let mut line = String::new();
        let stdout = child.stdout.take().expect("Xvfb's stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read Xvfb's display number");
        let number: u32 = line.trim().parse().unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("Xvfb did not say its display number (got {line:?})")
        });
        Xvfb {
            child,
            display: format!(":{number}"),
        }
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `body` with a display server: in the child, directly; in the
/// parent, by starting Xvfb and this one test again in a child process.
fn under_xvfb(test: &str, body: impl FnOnce()) {
    if std::env::var_os(CHILD_ENV).is_some() {
        body();
        return;
    }
    if !have("Xvfb") {
        println!(
            "SKIPPED {test}: Xvfb is not installed (scripts/setup-host.sh installs xvfb, x11-apps and xdotool)"
        );
        return;
    }
    for tool in ["xwd", "xdotool"] {
        assert!(
            have(tool),
            "{tool} is not installed: run scripts/setup-host.sh (packages x11-apps and xdotool)"
        );
    }
    let xvfb = Xvfb::start();
    let exe = std::env::current_exe().expect("this test binary");
    let status = Command::new(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &xvfb.display)
        .env("DISPLAY", &xvfb.display)
        .env_remove("WAYLAND_DISPLAY")
        .env_remove("WAYLAND_SOCKET")
        .status()
        .expect("run the test in a child process");
    assert!(status.success(), "{test} failed under Xvfb ({status})");
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn xdotool(args: &[&str]) -> String {
    let out = Command::new("xdotool")
        .args(args)
        .output()
        .expect("run xdotool");
    assert!(
        out.status.success(),
        "xdotool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The X window id of display `n`'s window (checking its title).
fn window_id(n: u32) -> String {
    let title = format!("PearVisor — display {n}");
    let mut id = String::new();
    wait_for(&format!("the window of display {n}"), || {
        let out = Command::new("xdotool")
            .args(["search", "--name", "PearVisor"])
            .output()
            .expect("run xdotool");
        id = String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|w| xdotool(&["getwindowname", w]).trim_end() == title)
            .unwrap_or("")
            .to_owned();
        !id.is_empty()
    });
    id
}

/// A window's contents as RGB, read with `xwd`.
struct Shot {
    width: u32,
    height: u32,
    rgb: Vec<[u8; 3]>,
}

impl Shot {
    fn at(&self, x: u32, y: u32) -> [u8; 3] {
        self.rgb[(y * self.width + x) as usize]
    }
}

/// Reads window `id` with xwd. Fails when the window changes size while
/// xwd reads it (X's GetImage then says BadMatch).
fn try_xwd(id: &str) -> Result<Shot, String> {
    let out = Command::new("xwd")
        .args(["-silent", "-nobdrs", "-id", id])
        .output()
        .expect("run xwd");
    if out.status.success() {
        Ok(parse_xwd(&out.stdout))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn xwd(id: &str) -> Shot {
    let mut last = String::new();
    for _ in 0..20 {
        match try_xwd(id) {
            Ok(shot) => return shot,
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("xwd: {last}")
}

/// Parses an XWD file (X Window Dump, version 7): a header of big-endian
/// 32-bit fields, the window's name, a colour map, then the pixels.
fn parse_xwd(data: &[u8]) -> Shot {
    let field = |i: usize| u32::from_be_bytes(data[i * 4..i * 4 + 4].try_into().unwrap());
    let header_size = field(0) as usize;
    assert_eq!(field(1), 7, "XWD version");
    assert_eq!(field(2), 2, "ZPixmap");
    let (width, height) = (field(4), field(5));
    let byte_order = field(7); // 0: least significant byte first
    let bits_per_pixel = field(11);
    let bytes_per_line = field(12) as usize;
    let masks = [field(14), field(15), field(16)];
    let ncolors = field(19) as usize;
    assert_eq!(bits_per_pixel, 32, "a 24-bit TrueColor window");
    let pixels = &data[header_size + ncolors * 12..];
    assert!(pixels.len() >= bytes_per_line * height as usize);
    let mut rgb = Vec::with_capacity((width * height) as usize);
    for y in 0..height as usize {
        for x in 0..width as usize {
            let b: [u8; 4] = pixels[y * bytes_per_line + x * 4..][..4]
                .try_into()
                .unwrap();
            let v = if byte_order == 0 {
                u32::from_le_bytes(b)
            } else {
                u32::from_be_bytes(b)
            };
            rgb.push(masks.map(|m| ((v & m) >> m.trailing_zeros()) as u8));
        }
    }
    Shot { width, height, rgb }
}

/// The guest's test picture: red follows x, green follows y, blue a
/// checkerboard of 8-pixel squares.
fn pattern(x: u32, y: u32) -> [u8; 3] {
    let b = if (x / 8 + y / 8).is_multiple_of(2) {
        40
    } else {
        200
    };
    [(x * 3) as u8, (y * 5) as u8, b]
}

/// Sends the whole `w` x `h` pattern to `scanout` as B8G8R8X8 with a
/// padded stride (what a guest framebuffer looks like).
fn show_pattern(display: &Display, scanout: u32, w: u32, h: u32) {
    display.set_mode(scanout, Some((w, h)));
    let stride = w * 4 + 64;
    let mut data = vec![0u8; (stride * h) as usize];
    for y in 0..h {
        for x in 0..w {
            let [r, g, b] = pattern(x, y);
            let i = (y * stride + x * 4) as usize;
            data[i..i + 4].copy_from_slice(&[b, g, r, 0]);
        }
    }
    let frame = FrameView {
        width: w,
        height: h,
        stride,
        format: PixelFormat::B8G8R8X8,
        data: &data,
    };
    display.update(scanout, &frame, Rect::new(0, 0, w, h));
}

/// Waits until window `id` shows `want` (window pixels to RGB) exactly.
fn wait_for_picture(what: &str, id: &str, size: (u32, u32), want: impl Fn(u32, u32) -> [u8; 3]) {
    let deadline = Instant::now() + WAIT;
    loop {
        let mismatch = match try_xwd(id) {
            Err(e) => Some(format!("xwd: {e}")),
            Ok(shot) => picture_mismatch(&shot, size, &want),
        };
        let Some(mismatch) = mismatch else {
            return;
        };
        assert!(
            Instant::now() < deadline,
            "the window never showed {what}: {mismatch}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Where `shot` differs from `want`, if anywhere.
fn picture_mismatch(
    shot: &Shot,
    size: (u32, u32),
    want: &impl Fn(u32, u32) -> [u8; 3],
) -> Option<String> {
    if (shot.width, shot.height) != size {
        return Some(format!("size {}x{}", shot.width, shot.height));
    }
    (0..size.1)
        .flat_map(|y| (0..size.0).map(move |x| (x, y)))
        .find(|&(x, y)| shot.at(x, y) != want(x, y))
        .map(|(x, y)| format!("({x}, {y}) is {:?}, not {:?}", shot.at(x, y), want(x, y)))
}

/// The RGB of scanout pixel (x, y) of `display`'s composited frame.
fn composited(display: &Display, scanout: u32) -> impl Fn(u32, u32) -> [u8; 3] {
    let f = display.composited_frame(scanout).expect("a frame");
    move |x, y| {
        let i = ((y * f.width + x) * 4) as usize;
        [f.rgba[i], f.rgba[i + 1], f.rgba[i + 2]]
    }
}

#[test]
fn window_shows_the_guest_screen() {
    under_xvfb("window_shows_the_guest_screen", || {
        // The window's thread runs under its syscall filter, as in the VMM.
        pv_seccomp::set_mode(pv_seccomp::SeccompMode::Kill);
        let display = Arc::new(Display::new(2));
        show_pattern(&display, 0, 320, 200);
        let last_closed = Arc::new(AtomicBool::new(false));
        let flag = last_closed.clone();
        let viewer = WindowViewer::start(
            display.clone(),
            None,
            Some(Box::new(move || flag.store(true, Ordering::SeqCst))),
        )
        .expect("open the window");
        let id0 = window_id(0);
        assert_eq!(viewer.windows(), 1, "display 1 is off: no window");

        // 1:1: the window shows the guest's frame pixel for pixel.
        wait_for_picture("the pattern", &id0, (320, 200), pattern);

        // A damaged rectangle is redrawn. (The frame passed is the whole
        // scanout; only the damaged part of it is new.)
        let full = [0x10u8, 0x20, 0x30, 0x00].repeat(320 * 200);
        let whole = FrameView {
            width: 320,
            height: 200,
            stride: 1280,
            format: PixelFormat::R8G8B8X8,
            data: &full,
        };
        display.update(0, &whole, Rect::new(10, 5, 20, 10));
        wait_for_picture(
            "the damaged rectangle",
            &id0,
            (320, 200),
            composited(&display, 0),
        );

        // The cursor is composited at its hot spot.
        let mut rgba = [255u8, 255, 255, 255].repeat(16 * 16);
        rgba[..4].copy_from_slice(&[0, 0, 0, 0]);
        display.set_cursor(
            0,
            Some(&CursorImage {
                width: 16,
                height: 16,
                hot_x: 2,
                hot_y: 3,
                rgba,
            }),
        );
        display.move_cursor(0, 100, 60);
        wait_for_picture("the cursor", &id0, (320, 200), composited(&display, 0));
        display.move_cursor(0, 318, 198);
        wait_for_picture(
            "the moved cursor",
            &id0,
            (320, 200),
            composited(&display, 0),
        );
        display.set_cursor(0, None);
        wait_for_picture("no cursor", &id0, (320, 200), composited(&display, 0));

        // Nothing changes, nothing is drawn.
        let presented = viewer.presented();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(viewer.presented(), presented, "redrawn without damage");

        // The window resized by the user: scaled, aspect kept, bars black.
        xdotool(&["windowsize", &id0, "700", "300"]);
        let vp = Viewport::fit((320, 200), (700, 300)).unwrap();
        assert_eq!((vp.x, vp.y, vp.width, vp.height), (110, 0, 480, 300));
        let frame = composited(&display, 0);
        wait_for_picture("the scaled picture", &id0, (700, 300), |x, y| {
            if x < vp.x || x >= vp.x + vp.width || y < vp.y || y >= vp.y + vp.height {
                return [0, 0, 0];
            }
            let (sx, sy) = vp.to_scanout(f64::from(x), f64::from(y));
            frame(sx, sy)
        });
        // Spot checks that do not depend on the mapping's details: 1.5x,
        // so scanout pixel (200, 100) covers window (410..411.5, 150..151.5).
        let shot = xwd(&id0);
        assert_eq!(shot.at(0, 150), [0, 0, 0]);
        assert_eq!(shot.at(699, 150), [0, 0, 0]);
        assert_eq!(shot.at(410, 150), pattern(200, 100));

        // A new mode: the window follows the guest's resolution.
        show_pattern(&display, 0, 200, 120);
        wait_for_picture("the new mode", &id0, (200, 120), pattern);

        // A scanout enabled later gets its own window.
        show_pattern(&display, 1, 160, 100);
        let id1 = window_id(1);
        wait_for("a second window", || viewer.windows() == 2);
        wait_for_picture("display 1", &id1, (160, 100), pattern);

        // Closing one window leaves the other; closing the last says so.
        xdotool(&["windowclose", &id1]);
        wait_for("display 1's window to close", || viewer.windows() == 1);
        assert!(!last_closed.load(Ordering::SeqCst));
        // It stays closed whatever the guest does next.
        show_pattern(&display, 1, 160, 100);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(viewer.windows(), 1);
        xdotool(&["windowclose", &id0]);
        wait_for("the last window to close", || viewer.windows() == 0);
        wait_for("on_last_closed", || last_closed.load(Ordering::SeqCst));
        viewer.stop();
    });
}

/// An `InputSink` that records what it gets.
#[derive(Default)]
struct Recorder(Mutex<Vec<InputEvent>>);

impl InputSink for Recorder {
    fn send(&self, event: InputEvent) {
        self.0.lock().unwrap().push(event);
    }
}

impl Recorder {
    fn take(&self) -> Vec<InputEvent> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }

    /// Waits until the events recorded since the last take end with
    /// `want` (earlier ones, such as pointer moves on the way, are
    /// dropped), then takes them. Pointer moves are left out of the
    /// comparison unless `want` has some.
    fn expect(&self, what: &str, want: &[InputEvent]) {
        let moves = want
            .iter()
            .any(|e| matches!(e, InputEvent::PointerMove { .. }));
        let deadline = Instant::now() + WAIT;
        loop {
            let got: Vec<InputEvent> = self
                .0
                .lock()
                .unwrap()
                .iter()
                .copied()
                .filter(|e| moves || !matches!(e, InputEvent::PointerMove { .. }))
                .collect();
            if got.ends_with(want) {
                self.take();
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: wanted {want:?} at the end of {got:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn key(code: u16, pressed: bool) -> InputEvent {
    InputEvent::Key { code, pressed }
}

fn button(code: u16, pressed: bool) -> InputEvent {
    InputEvent::Button { code, pressed }
}

fn pointer(x: u32, y: u32) -> InputEvent {
    InputEvent::PointerMove { scanout: 0, x, y }
}

#[test]
fn window_sends_keyboard_and_mouse() {
    under_xvfb("window_sends_keyboard_and_mouse", || {
        // The window's thread runs under its syscall filter, as in the VMM.
        pv_seccomp::set_mode(pv_seccomp::SeccompMode::Kill);
        let display = Arc::new(Display::new(2));
        show_pattern(&display, 0, 320, 200);
        let input = Arc::new(Recorder::default());
        let viewer = WindowViewer::start(
            display.clone(),
            Some(input.clone() as Arc<dyn InputSink>),
            None,
        )
        .expect("open the window");
        let id = window_id(0);
        wait_for_picture("the pattern", &id, (320, 200), pattern);

        // The pointer, at 1:1.
        xdotool(&["mousemove", "--window", &id, "100", "50"]);
        input.expect("a pointer move", &[pointer(100, 50)]);
        xdotool(&["mousemove", "--window", &id, "319", "0"]);
        input.expect("a pointer move to the corner", &[pointer(319, 0)]);

        // Keys, by their Linux codes (the keyboard goes to the window
        // under the pointer, or the focused one).
        xdotool(&["windowfocus", "--sync", &id]);
        xdotool(&["key", "a"]);
        input.expect("KEY_A", &[key(30, true), key(30, false)]);
        xdotool(&["key", "Return", "BackSpace", "Up"]);
        input.expect(
            "Return, Backspace, Up",
            &[
                key(28, true),
                key(28, false),
                key(14, true),
                key(14, false),
                key(103, true),
                key(103, false),
            ],
        );
        xdotool(&[
            "keydown", "shift", "keydown", "b", "keyup", "b", "keyup", "shift",
        ]);
        input.expect(
            "Shift+B",
            &[key(42, true), key(48, true), key(48, false), key(42, false)],
        );

        // Buttons and the wheel.
        xdotool(&["click", "1"]);
        input.expect(
            "the left button",
            &[button(0x110, true), button(0x110, false)],
        );
        xdotool(&["click", "3"]);
        input.expect(
            "the right button",
            &[button(0x111, true), button(0x111, false)],
        );
        xdotool(&["click", "2"]);
        input.expect(
            "the middle button",
            &[button(0x112, true), button(0x112, false)],
        );
        xdotool(&["click", "4"]);
        input.expect("the wheel away", &[InputEvent::Wheel { delta: 1 }]);
        xdotool(&["click", "5"]);
        input.expect("the wheel back", &[InputEvent::Wheel { delta: -1 }]);

        // Scaled 2x with bars: window 800x400, picture 640x400 at x = 80.
        xdotool(&["windowsize", &id, "800", "400"]);
        wait_for_picture("the scaled picture", &id, (800, 400), |x, y| {
            if !(80..720).contains(&x) {
                return [0, 0, 0];
            }
            pattern((x - 80) / 2, y / 2)
        });
        xdotool(&["mousemove", "--window", &id, "281", "101"]);
        input.expect("a scaled pointer move", &[pointer(100, 50)]);
        xdotool(&["mousemove", "--window", &id, "719", "399"]);
        input.expect("the scaled corner", &[pointer(319, 199)]);
        // On a bar: clamped to the picture's edge.
        xdotool(&["mousemove", "--window", &id, "10", "200"]);
        input.expect("a pointer on the bar", &[pointer(0, 100)]);

        // A key held when the window loses the focus (to display 1's
        // window, enabled now) is released.
        xdotool(&["windowfocus", "--sync", &id]);
        xdotool(&["keydown", "ctrl"]);
        input.expect("Ctrl down", &[key(29, true)]);
        show_pattern(&display, 1, 160, 100);
        let id1 = window_id(1);
        xdotool(&["windowfocus", "--sync", &id1]);
        input.expect("Ctrl released with the focus", &[key(29, false)]);
        xdotool(&["keyup", "ctrl"]);

        viewer.stop();
    });
}

/// A `ResizeSink` that records what the guest is asked (a GPU whose guest
/// never switches by itself).
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
        std::mem::take(&mut *self.0.lock().unwrap())
    }

    /// Nothing is asked for a while (several settling delays).
    fn expect_none(&self, what: &str) {
        std::thread::sleep(RESIZE_SETTLE * 4);
        assert_eq!(self.take(), vec![], "{what}");
    }
}

#[test]
fn resizing_the_window_asks_the_guest_once() {
    under_xvfb("resizing_the_window_asks_the_guest_once", || {
        let display = Arc::new(Display::new(1));
        show_pattern(&display, 0, 320, 200);
        let resizes = Arc::new(Resizes::default());
        display.connect_resizer(Some(resizes.clone() as Arc<dyn ResizeSink>));
        let viewer = WindowViewer::start(display.clone(), None, None).expect("open the window");
        let id = window_id(0);
        wait_for_picture("the pattern", &id, (320, 200), pattern);
        resizes.expect_none("a window opened at the guest's mode asks nothing");

        // A drag: a size every ~30 ms (well inside the settling delay,
        // each one drawn), then one request, for the last.
        for (w, h) in [
            ("400", "250"),
            ("500", "300"),
            ("600", "340"),
            ("640", "360"),
        ] {
            xdotool(&["windowsize", &id, w, h]);
            std::thread::sleep(RESIZE_SETTLE / 5);
        }
        wait_for("the request", || !resizes.0.lock().unwrap().is_empty());
        std::thread::sleep(RESIZE_SETTLE * 4);
        assert_eq!(
            resizes.take(),
            vec![(0, 640, 360)],
            "one request, debounced"
        );

        // Until the guest switches, the picture is letterboxed.
        let vp = Viewport::fit((320, 200), (640, 360)).unwrap();
        wait_for_picture("the letterboxed picture", &id, (640, 360), |x, y| {
            if x < vp.x || x >= vp.x + vp.width || y < vp.y || y >= vp.y + vp.height {
                return [0, 0, 0];
            }
            let (sx, sy) = vp.to_scanout(f64::from(x), f64::from(y));
            pattern(sx, sy)
        });

        // The guest switches to the size asked: shown 1:1, nothing asked.
        show_pattern(&display, 0, 640, 360);
        wait_for_picture("the guest's new mode", &id, (640, 360), pattern);
        resizes.expect_none("the guest took the window's size");

        // The guest changes its mode by itself: the window follows and does
        // not ask the guest back (no feedback loop).
        show_pattern(&display, 0, 300, 180);
        wait_for_picture("the guest's own mode", &id, (300, 180), pattern);
        resizes.expect_none("the window followed the guest");

        // Resized again, and back before the guest answered: the request
        // is taken back.
        xdotool(&["windowsize", &id, "500", "280"]);
        wait_for("the second request", || {
            !resizes.0.lock().unwrap().is_empty()
        });
        assert_eq!(resizes.take(), vec![(0, 500, 280)]);
        xdotool(&["windowsize", &id, "300", "180"]);
        wait_for("the request taken back", || {
            !resizes.0.lock().unwrap().is_empty()
        });
        assert_eq!(resizes.take(), vec![(0, 300, 180)]);
        // A tiny window asks for the smallest display.
        xdotool(&["windowsize", &id, "20", "10"]);
        wait_for("the clamped request", || {
            !resizes.0.lock().unwrap().is_empty()
        });
        assert_eq!(resizes.take(), vec![(0, 32, 32)]);
        viewer.stop();
    });
}
