//! The web viewer in a real browser: headless Chromium driven through
//! chromedriver (WebDriver, spoken here over a minimal HTTP client). The
//! page's canvas must equal the screenshot, pixel for pixel, through both
//! raw and PNG rectangles; keys typed and mouse moves and clicks in the
//! page must reach the input sink.
//!
//! Needs Debian's `chromium` and `chromium-driver` (scripts/setup-host.sh
//! installs them); fails without them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pv_display::{
    CursorImage, Display, FrameView, InputEvent, InputSink, PixelFormat, Rect, ScanoutSink,
    WebViewer,
};
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const TIMEOUT: Duration = Duration::from_secs(30);
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

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

/// One HTTP/1.1 request with a JSON body; the JSON answer.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> std::io::Result<Value> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    // Read the head, then as much body as Content-Length says (the driver
    // may keep the connection open).
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    let split = loop {
        if let Some(p) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::Error::other("no HTTP head"));
        }
        out.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&out[..split]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let mut payload = out[split + 4..].to_vec();
    match length {
        Some(len) => {
            while payload.len() < len {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                payload.extend_from_slice(&buf[..n]);
            }
        }
        None => {
            s.read_to_end(&mut payload)?;
        }
    }
    if head.contains("transfer-encoding: chunked") {
        payload = dechunk(&payload);
    }
    serde_json::from_slice(&payload).map_err(std::io::Error::other)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..eol]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[eol + 2 + size + 2..];
    }
    out
}

/// chromedriver and one browser session; both end when dropped.
struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    _profile: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Browser {
    fn start() -> Self {
        for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: install Debian's {package} (scripts/setup-host.sh does)"
            );
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let profile = TempDir(
            std::env::temp_dir().join(format!("pv-display-chromium-{}-{port}", std::process::id())),
        );
        std::fs::create_dir_all(&profile.0).unwrap();
        let mut browser = Browser {
            driver,
            addr,
            session: String::new(),
            _profile: TempDir(profile.0.clone()),
        };
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Ok(v) = http(addr, "GET", "/status", None) {
                if v["value"]["ready"] == true {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run",
                    "--window-size=800,600", "--force-device-scale-factor=1",
                    format!("--user-data-dir={}", profile.0.display()),
                ]
            }
        }}});
        let v = http(addr, "POST", "/session", Some(&caps)).unwrap();
        browser.session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_owned();
        std::mem::forget(profile);
        browser
    }

    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        let v = http(self.addr, method, &path, body.as_ref()).unwrap();
        assert!(v["value"].get("error").is_none(), "{method} {path}: {v}");
        v["value"].clone()
    }

    fn script(&self, script: &str) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }

    fn wait_script(&self, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let v = self.script(script);
            if v != Value::Null && v != false {
                return v;
            }
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn element(&self, css: &str) -> String {
        let v = self.cmd(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_owned()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = http(
                self.addr,
                "DELETE",
                &format!("/session/{}", self.session),
                None,
            );
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The canvas of `scanout` as RGBA, or null before it has the size.
fn canvas_script(scanout: u32, w: u32, h: u32) -> String {
    format!(
        "const c = document.getElementById('display-{scanout}');
         if (!c || c.width !== {w} || c.height !== {h}) return null;
         const d = c.getContext('2d').getImageData(0, 0, {w}, {h}).data;
         let s = '';
         for (let i = 0; i < d.length; i += 4096) s += String.fromCharCode.apply(null, d.subarray(i, i + 4096));
         return btoa(s);"
    )
}

fn b64decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("bad base64"),
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').map(val).collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &v)| acc | u32::from(v) << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
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
        if let Some(s) = b.script(&canvas_script(0, w, h)).as_str() {
            let got = b64decode(s);
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
    let b = Browser::start();
    b.cmd(
        "POST",
        "/url",
        Some(json!({"url": format!("http://{}/", viewer.local_addr())})),
    );

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
    );

    // Keys typed into the focused canvas.
    let canvas = b.element("#display-0");
    b.cmd("POST", &format!("/element/{canvas}/click"), Some(json!({})));
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
    b.cmd("POST", "/actions", Some(key_actions));
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
    let rect = b.script(
        "const r = document.getElementById('display-0').getBoundingClientRect();
         return [r.left, r.top, r.width, r.height];",
    );
    let left = rect[0].as_f64().unwrap();
    let top = rect[1].as_f64().unwrap();
    assert_eq!(
        rect[2].as_f64().unwrap(),
        f64::from(w),
        "not scaled at this size"
    );
    let (px, py) = (57, 33);
    let mouse = json!({"actions": [{"type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"}, "actions": [
        {"type": "pointerMove", "origin": "viewport", "x": (left + f64::from(px)).ceil() as i64, "y": (top + f64::from(py)).ceil() as i64},
        {"type": "pointerDown", "button": 2}, {"type": "pointerUp", "button": 2},
    ]}]});
    b.cmd("POST", "/actions", Some(mouse));
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
    b.cmd("POST", "/actions", Some(wheel));
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
    );
    // A mode change resizes the canvas, which then shows the new frame.
    display.set_mode(0, Some((200, 120)));
    push(&display, 200, 120, 0x11, Rect::new(0, 0, 200, 120));
    wait_canvas_equals_screenshot(&b, &display, 200, 120, "after the mode change");

    if let Ok(path) = std::env::var("PV_BROWSER_SCREENSHOT") {
        let png = b.cmd("GET", "/screenshot", None);
        std::fs::write(path, b64decode(png.as_str().unwrap())).unwrap();
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
