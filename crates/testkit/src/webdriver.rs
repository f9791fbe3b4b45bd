//! A minimal WebDriver client for tests: headless Chromium through Debian's
//! `chromedriver`, spoken to over a small blocking HTTP/1.1 client (no
//! async runtime, no extra dependencies). Used by the web viewer's browser
//! tests and the end-to-end tests that open a guest's screen.
//!
//! ```no_run
//! use pv_testkit::webdriver::Browser;
//! let b = Browser::start()?;
//! b.navigate("http://127.0.0.1:8080/")?;
//! let title = b.script("return document.title;")?;
//! # Ok::<(), pv_testkit::webdriver::WebDriverError>(())
//! ```
//!
//! Needs Debian's `chromium` and `chromium-driver` (scripts/setup-host.sh
//! installs them).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use thiserror::Error;

/// Debian's Chromium.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Debian's chromedriver.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long one WebDriver request, the driver's start and the waits below
/// may take by default.
pub const TIMEOUT: Duration = Duration::from_secs(30);
/// The key of a web element reference in WebDriver answers.
pub const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Errors of the WebDriver client.
#[derive(Debug, Error)]
pub enum WebDriverError {
    #[error("{path} is missing: install Debian's {package} (scripts/setup-host.sh does)")]
    Missing { path: String, package: String },
    #[error("cannot start chromedriver")]
    Spawn(#[source] io::Error),
    #[error("chromedriver did not become ready within {0:?}")]
    NotReady(Duration),
    #[error("HTTP {method} {path}")]
    Io {
        method: String,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("HTTP {method} {path}: the answer is not JSON")]
    NotJson {
        method: String,
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{method} {path} failed: {answer}")]
    Command {
        method: String,
        path: String,
        answer: String,
    },
    #[error("no browser session: {0}")]
    NoSession(String),
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },
    #[error("bad base64 from the browser")]
    Base64,
}

/// One HTTP/1.1 request to `addr` with an optional JSON body; the answer's
/// body parsed as JSON (any status: WebDriver puts errors in the body).
pub fn http_json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, WebDriverError> {
    let io_err = |source| WebDriverError::Io {
        method: method.to_string(),
        path: path.to_string(),
        source,
    };
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let (_, payload) = http_request(
        addr,
        method,
        path,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .map_err(io_err)?;
    serde_json::from_slice(&payload).map_err(|source| WebDriverError::NotJson {
        method: method.to_string(),
        path: path.to_string(),
        source,
    })
}

/// One HTTP/1.1 request; the status code and the body (Content-Length or
/// chunked or to the end). Times out after [`TIMEOUT`].
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    // Read the head, then as much body as Content-Length says (the server
    // may keep the connection open).
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    let split = loop {
        if let Some(p) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(io::Error::other(
                "the connection closed before the HTTP head",
            ));
        }
        out.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&out[..split]).to_ascii_lowercase();
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| io::Error::other("no HTTP status line"))?;
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
            payload.truncate(len);
        }
        None => {
            s.read_to_end(&mut payload)?;
        }
    }
    if head.contains("transfer-encoding: chunked") {
        payload = dechunk(&payload).ok_or_else(|| io::Error::other("bad chunked body"))?;
    }
    Ok((status, payload))
}

/// Joins a chunked transfer-encoded body; None when it is malformed.
pub fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let line = std::str::from_utf8(&data[..eol]).ok()?;
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            break;
        }
        let start = eol + 2;
        out.extend_from_slice(data.get(start..start.checked_add(size)?)?);
        data = data.get(start + size + 2..)?;
    }
    Some(out)
}

/// Decodes standard base64 (padding optional); None on other characters.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let bytes: Vec<u8> = s
        .bytes()
        .filter(|&c| c != b'=')
        .map(val)
        .collect::<Option<_>>()?;
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        if chunk.len() == 1 {
            return None;
        }
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &v)| acc | u32::from(v) << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    Some(out)
}

/// Removes its directory when dropped.
#[derive(Debug)]
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How to start the browser.
#[derive(Debug, Clone)]
pub struct BrowserOptions {
    /// The window's size in CSS pixels (device scale factor 1).
    pub window: (u32, u32),
}

impl Default for BrowserOptions {
    fn default() -> Self {
        Self { window: (800, 600) }
    }
}

/// chromedriver and one headless Chromium session; both end when dropped.
#[derive(Debug)]
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    _profile: TempDir,
}

impl Browser {
    /// chromedriver on a free loopback port and a headless Chromium
    /// session with an 800x600 window.
    pub fn start() -> Result<Self, WebDriverError> {
        Self::start_with(&BrowserOptions::default())
    }

    /// [`Browser::start`] with options.
    pub fn start_with(options: &BrowserOptions) -> Result<Self, WebDriverError> {
        for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            if !Path::new(path).exists() {
                return Err(WebDriverError::Missing {
                    path: path.into(),
                    package: package.into(),
                });
            }
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(WebDriverError::Spawn)?
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let profile = TempDir(
            std::env::temp_dir().join(format!("pv-chromium-{}-{port}", std::process::id())),
        );
        std::fs::create_dir_all(&profile.0).map_err(WebDriverError::Spawn)?;
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(WebDriverError::Spawn)?;
        let mut browser = Browser {
            driver,
            addr,
            session: String::new(),
            _profile: profile,
        };
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Ok(v) = http_json(addr, "GET", "/status", None) {
                if v["value"]["ready"] == true {
                    break;
                }
            }
            if Instant::now() >= deadline {
                return Err(WebDriverError::NotReady(TIMEOUT));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let (w, h) = options.window;
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run",
                    format!("--window-size={w},{h}"), "--force-device-scale-factor=1",
                    format!("--user-data-dir={}", browser._profile.0.display()),
                ]
            }
        }}});
        let v = http_json(addr, "POST", "/session", Some(&caps))?;
        browser.session = v["value"]["sessionId"]
            .as_str()
            .ok_or_else(|| WebDriverError::NoSession(v.to_string()))?
            .to_owned();
        Ok(browser)
    }

    /// A command of this session: `path` is relative to `/session/{id}`;
    /// returns the answer's `value`.
    pub fn cmd(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, WebDriverError> {
        let path = format!("/session/{}{path}", self.session);
        let v = http_json(self.addr, method, &path, body.as_ref())?;
        if v["value"].get("error").is_some() {
            return Err(WebDriverError::Command {
                method: method.to_string(),
                path,
                answer: v.to_string(),
            });
        }
        Ok(v["value"].clone())
    }

    /// Opens `url`.
    pub fn navigate(&self, url: &str) -> Result<(), WebDriverError> {
        self.cmd("POST", "/url", Some(json!({ "url": url })))
            .map(|_| ())
    }

    /// Runs `script` (a function body) in the page; its return value.
    pub fn script(&self, script: &str) -> Result<Value, WebDriverError> {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }

    /// Runs an asynchronous `script`: its last argument is the callback
    /// that returns its value.
    pub fn script_async(&self, script: &str) -> Result<Value, WebDriverError> {
        self.cmd(
            "POST",
            "/execute/async",
            Some(json!({"script": script, "args": []})),
        )
    }

    /// Runs `script` until it returns something other than null or false
    /// (within `timeout`); that value.
    pub fn wait_script(
        &self,
        what: &str,
        script: &str,
        timeout: Duration,
    ) -> Result<Value, WebDriverError> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.script(script)?;
            if v != Value::Null && v != false {
                return Ok(v);
            }
            if Instant::now() >= deadline {
                return Err(WebDriverError::Timeout {
                    what: what.to_string(),
                    after: timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The element matching a CSS selector.
    pub fn element(&self, css: &str) -> Result<String, WebDriverError> {
        let v = self.cmd(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        )?;
        v[ELEMENT]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| WebDriverError::Command {
                method: "POST".into(),
                path: format!("/element {css}"),
                answer: v.to_string(),
            })
    }

    /// Clicks an element (its centre).
    pub fn click(&self, element: &str) -> Result<(), WebDriverError> {
        self.cmd(
            "POST",
            &format!("/element/{element}/click"),
            Some(json!({})),
        )
        .map(|_| ())
    }

    /// Performs WebDriver actions (`{"actions": [...]}`).
    pub fn actions(&self, actions: Value) -> Result<(), WebDriverError> {
        self.cmd("POST", "/actions", Some(actions)).map(|_| ())
    }

    /// Presses and releases each key of `keys` in turn (WebDriver key
    /// values: characters, or `\u{E006}` for Return and the like). Capital
    /// letters and shifted symbols are typed with an explicit Shift, as a
    /// US keyboard would need.
    pub fn type_keys(&self, keys: &str) -> Result<(), WebDriverError> {
        const SHIFT: &str = "\u{E008}";
        let mut list = Vec::new();
        for c in keys.chars() {
            let shifted = c.is_ascii_uppercase() || "~!@#$%^&*()_+{}|:\"<>?".contains(c);
            let key = if shifted {
                unshifted(c).to_string()
            } else {
                c.to_string()
            };
            if shifted {
                list.push(json!({"type": "keyDown", "value": SHIFT}));
            }
            list.push(json!({"type": "keyDown", "value": key}));
            list.push(json!({"type": "keyUp", "value": key}));
            if shifted {
                list.push(json!({"type": "keyUp", "value": SHIFT}));
            }
        }
        self.actions(json!({"actions": [{"type": "key", "id": "kbd", "actions": list}]}))
    }

    /// Moves the mouse to viewport CSS pixel (`x`, `y`).
    pub fn mouse_to(&self, x: i64, y: i64) -> Result<(), WebDriverError> {
        self.actions(json!({"actions": [{"type": "pointer", "id": "mouse",
            "parameters": {"pointerType": "mouse"}, "actions": [
            {"type": "pointerMove", "origin": "viewport", "x": x, "y": y, "duration": 0},
        ]}]}))
    }

    /// The element's bounding box in the viewport: left, top, width, height
    /// (CSS pixels).
    pub fn rect_of(&self, css: &str) -> Result<[f64; 4], WebDriverError> {
        let v = self.script(&format!(
            "const e = document.querySelector({css:?});
             if (!e) return null;
             const r = e.getBoundingClientRect();
             return [r.left, r.top, r.width, r.height];"
        ))?;
        let n = |i: usize| v[i].as_f64();
        match (n(0), n(1), n(2), n(3)) {
            (Some(l), Some(t), Some(w), Some(h)) => Ok([l, t, w, h]),
            _ => Err(WebDriverError::Command {
                method: "script".into(),
                path: format!("rect of {css}"),
                answer: v.to_string(),
            }),
        }
    }

    /// The pixels of canvas `#id` as RGBA8 rows, or None while the canvas is
    /// missing or not `w` x `h`.
    pub fn canvas_rgba(&self, id: &str, w: u32, h: u32) -> Result<Option<Vec<u8>>, WebDriverError> {
        let v = self.script(&format!(
            "const c = document.getElementById({id:?});
             if (!c || c.width !== {w} || c.height !== {h}) return null;
             const d = c.getContext('2d').getImageData(0, 0, {w}, {h}).data;
             let s = '';
             for (let i = 0; i < d.length; i += 4096) s += String.fromCharCode.apply(null, d.subarray(i, i + 4096));
             return btoa(s);"
        ))?;
        match v.as_str() {
            None => Ok(None),
            Some(s) => base64_decode(s).map(Some).ok_or(WebDriverError::Base64),
        }
    }

    /// A PNG screenshot of the page.
    pub fn screenshot_png(&self) -> Result<Vec<u8>, WebDriverError> {
        let v = self.cmd("GET", "/screenshot", None)?;
        v.as_str()
            .and_then(base64_decode)
            .ok_or(WebDriverError::Base64)
    }
}

/// The key that gives `c` with Shift on a US keyboard.
fn unshifted(c: char) -> char {
    const PAIRS: &[(char, char)] = &[
        ('~', '`'),
        ('!', '1'),
        ('@', '2'),
        ('#', '3'),
        ('$', '4'),
        ('%', '5'),
        ('^', '6'),
        ('&', '7'),
        ('*', '8'),
        ('(', '9'),
        (')', '0'),
        ('_', '-'),
        ('+', '='),
        ('{', '['),
        ('}', ']'),
        ('|', '\\'),
        (':', ';'),
        ('"', '\''),
        ('<', ','),
        ('>', '.'),
        ('?', '/'),
    ];
    PAIRS
        .iter()
        .find(|(s, _)| *s == c)
        .map(|&(_, u)| u)
        .unwrap_or(c.to_ascii_lowercase())
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = http_json(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVsbG8").unwrap(), b"hello");
        assert_eq!(base64_decode("AAEC/w==").unwrap(), [0, 1, 2, 255]);
        assert_eq!(base64_decode("").unwrap(), b"");
        assert!(base64_decode("a$bc").is_none());
        assert!(base64_decode("abcde").is_none());
    }

    #[test]
    fn chunked_bodies() {
        assert_eq!(
            dechunk(b"5\r\nhello\r\n6;x=1\r\n world\r\n0\r\n\r\n").unwrap(),
            b"hello world"
        );
        assert!(dechunk(b"ff\r\nshort\r\n").is_none());
        assert!(dechunk(b"zz\r\n").is_none());
    }

    #[test]
    fn shifted_keys() {
        assert_eq!(unshifted('A'), 'a');
        assert_eq!(unshifted('!'), '1');
        assert_eq!(unshifted('?'), '/');
    }

    #[test]
    fn http_against_a_tiny_server() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            // The request may arrive in several reads (head, then body).
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            let complete = |got: &[u8]| {
                let text = String::from_utf8_lossy(got);
                let Some(end) = text.find("\r\n\r\n") else {
                    return false;
                };
                let len = text
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                got.len() >= end + 4 + len
            };
            while !complete(&got) {
                let n = s.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            let req = String::from_utf8_lossy(&got).into_owned();
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{\"a\": true}")
                .unwrap();
            req
        });
        let v = http_json(addr, "POST", "/x", Some(&json!({"k": 1}))).unwrap();
        assert_eq!(v, json!({"a": true}));
        let req = server.join().unwrap();
        assert!(req.starts_with("POST /x HTTP/1.1\r\n"), "{req}");
        assert!(req.ends_with("\r\n\r\n{\"k\":1}"), "{req}");
    }
}
