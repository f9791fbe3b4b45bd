//! The web viewer over real sockets: a WebSocket client in the test plays
//! the page.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use pv_display::web::protocol::{
    ServerText, ENCODING_PNG, ENCODING_RAW, HEADER_LEN, KIND_CURSOR, KIND_RECT,
};
use pv_display::{
    CursorImage, Display, FrameView, InputEvent, InputSink, PixelFormat, Rect, ResizeSink,
    ScanoutSink, WebViewer,
};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Recorder(Mutex<Vec<InputEvent>>);

impl InputSink for Recorder {
    fn send(&self, event: InputEvent) {
        self.0.lock().unwrap().push(event);
    }
}

impl Recorder {
    fn wait_for(&self, n: usize) -> Vec<InputEvent> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let got = self.0.lock().unwrap().clone();
            if got.len() >= n {
                return got;
            }
            assert!(Instant::now() < deadline, "only {got:?} arrived");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// An R8G8B8A8 frame whose pixel (x, y) is (x, y, seed, 0x80).
fn frame_data(w: u32, h: u32, seed: u8) -> Vec<u8> {
    (0..h)
        .flat_map(|y| (0..w).flat_map(move |x| [x as u8, y as u8, seed, 0x80]))
        .collect()
}

fn push(display: &Display, w: u32, h: u32, seed: u8, damage: Rect) {
    let data = frame_data(w, h, seed);
    let view = FrameView {
        width: w,
        height: h,
        stride: w * 4,
        format: PixelFormat::R8G8B8A8,
        data: &data,
    };
    display.update(0, &view, damage);
}

/// What the viewer should show of `rect` of a frame pushed with `seed`.
fn expected(rect: Rect, seed: u8) -> Vec<u8> {
    (rect.y..rect.y + rect.height)
        .flat_map(|y| {
            (rect.x..rect.x + rect.width).flat_map(move |x| [x as u8, y as u8, seed, 255])
        })
        .collect()
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn setup(w: u32, h: u32) -> (Arc<Display>, Arc<Recorder>, WebViewer) {
    let display = Arc::new(Display::new(1));
    display.set_mode(0, Some((w, h)));
    push(&display, w, h, 1, Rect::new(0, 0, w, h));
    let recorder = Arc::new(Recorder::default());
    let viewer = WebViewer::start(
        loopback(),
        display.clone(),
        Some(recorder.clone() as Arc<dyn InputSink>),
    )
    .unwrap();
    (display, recorder, viewer)
}

async fn connect(viewer: &WebViewer, query: &str) -> Ws {
    let url = format!("ws://{}/ws{query}", viewer.local_addr());
    let (ws, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(url))
        .await
        .unwrap()
        .unwrap();
    ws
}

/// A decoded server message.
#[derive(Debug, PartialEq)]
enum Msg {
    Text(ServerText),
    Rect {
        scanout: u16,
        rect: Rect,
        rgba: Vec<u8>,
        png: bool,
    },
    Cursor {
        scanout: u16,
        hot: (u32, u32),
        size: (u32, u32),
        rgba: Vec<u8>,
    },
}

fn decode(m: Message) -> Option<Msg> {
    match m {
        Message::Text(t) => Some(Msg::Text(serde_json::from_str(&t).unwrap())),
        Message::Binary(b) => {
            let f = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
            let scanout = u16::from_le_bytes([b[2], b[3]]);
            let payload = &b[HEADER_LEN..];
            match b[0] {
                KIND_RECT => {
                    let rect = Rect::new(f(4), f(8), f(12), f(16));
                    let (rgba, png) = match b[1] {
                        ENCODING_RAW => (payload.to_vec(), false),
                        ENCODING_PNG => (decode_png(payload, rect), true),
                        other => panic!("encoding {other}"),
                    };
                    Some(Msg::Rect {
                        scanout,
                        rect,
                        rgba,
                        png,
                    })
                }
                KIND_CURSOR => Some(Msg::Cursor {
                    scanout,
                    hot: (f(4), f(8)),
                    size: (f(12), f(16)),
                    rgba: payload.to_vec(),
                }),
                other => panic!("kind {other}"),
            }
        }
        Message::Close(_) => None,
        other => panic!("unexpected {other:?}"),
    }
}

fn decode_png(data: &[u8], rect: Rect) -> Vec<u8> {
    let mut reader = png::Decoder::new(std::io::Cursor::new(data))
        .read_info()
        .unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (rect.width, rect.height));
    assert_eq!(info.color_type, png::ColorType::Rgb);
    buf[..info.buffer_size()]
        .chunks_exact(3)
        .flat_map(|p| [p[0], p[1], p[2], 255])
        .collect()
}

async fn recv(ws: &mut Ws) -> Option<Msg> {
    let m = tokio::time::timeout(TIMEOUT, ws.next())
        .await
        .expect("nothing from the viewer")?;
    decode(m.ok()?)
}

/// Reads messages up to a sync and acknowledges it.
async fn batch(ws: &mut Ws) -> Vec<Msg> {
    let mut out = Vec::new();
    loop {
        match recv(ws).await.expect("connection closed") {
            Msg::Text(ServerText::Sync { seq }) => {
                let ack = format!(r#"{{"type":"ack","seq":{seq}}}"#);
                ws.send(Message::Text(ack.into())).await.unwrap();
                return out;
            }
            m => out.push(m),
        }
    }
}

async fn hello(ws: &mut Ws) -> ServerText {
    match recv(ws).await {
        Some(Msg::Text(h @ ServerText::Hello { .. })) => h,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_viewer_gets_the_full_frame_then_damage() {
    let (display, _, viewer) = setup(64, 48);
    let mut ws = connect(&viewer, "?encoding=raw").await;
    assert_eq!(
        hello(&mut ws).await,
        ServerText::Hello {
            version: 1,
            scanouts: 1,
            input: true
        }
    );
    let first = batch(&mut ws).await;
    let full = Rect::new(0, 0, 64, 48);
    assert_eq!(
        first,
        vec![
            Msg::Text(ServerText::Mode {
                scanout: 0,
                width: 64,
                height: 48,
                enabled: true
            }),
            Msg::Rect {
                scanout: 0,
                rect: full,
                rgba: expected(full, 1),
                png: false
            },
            Msg::Cursor {
                scanout: 0,
                hot: (0, 0),
                size: (0, 0),
                rgba: vec![]
            },
            Msg::Text(ServerText::CursorMove {
                scanout: 0,
                x: 0,
                y: 0
            }),
        ]
    );

    let damage = Rect::new(10, 20, 7, 5);
    push(&display, 64, 48, 2, damage);
    assert_eq!(
        batch(&mut ws).await,
        vec![Msg::Rect {
            scanout: 0,
            rect: damage,
            rgba: expected(damage, 2),
            png: false
        }]
    );

    let cursor = CursorImage {
        width: 2,
        height: 2,
        hot_x: 1,
        hot_y: 1,
        rgba: vec![9; 16],
    };
    display.set_cursor(0, Some(&cursor));
    display.move_cursor(0, 30, 40);
    // The viewer may fetch between the two calls: read until the move.
    let mut got = Vec::new();
    while !got.contains(&Msg::Text(ServerText::CursorMove {
        scanout: 0,
        x: 30,
        y: 40,
    })) {
        got.extend(batch(&mut ws).await);
    }
    assert_eq!(
        got[0],
        Msg::Cursor {
            scanout: 0,
            hot: (1, 1),
            size: (2, 2),
            rgba: vec![9; 16]
        }
    );

    display.set_mode(0, Some((32, 16)));
    push(&display, 32, 16, 3, Rect::new(0, 0, 32, 16));
    let got = batch(&mut ws).await;
    let full = Rect::new(0, 0, 32, 16);
    // The mode and the new frame: in one batch, or the mode first.
    let mut all = got;
    if all.len() == 1 {
        all.extend(batch(&mut ws).await);
    }
    assert_eq!(
        all,
        vec![
            Msg::Text(ServerText::Mode {
                scanout: 0,
                width: 32,
                height: 16,
                enabled: true
            }),
            Msg::Rect {
                scanout: 0,
                rect: full,
                rgba: expected(full, 3),
                png: false
            },
        ]
    );
    viewer.stop();
}

#[tokio::test]
async fn png_rects_decode_to_the_frame() {
    let (display, _, viewer) = setup(100, 80);
    let mut ws = connect(&viewer, "?encoding=png").await;
    hello(&mut ws).await;
    let first = batch(&mut ws).await;
    let full = Rect::new(0, 0, 100, 80);
    assert!(first.contains(&Msg::Rect {
        scanout: 0,
        rect: full,
        rgba: expected(full, 1),
        png: true
    }));
    // Auto: small rects raw, large ones PNG.
    drop(ws);
    let mut ws = connect(&viewer, "").await;
    hello(&mut ws).await;
    batch(&mut ws).await;
    let small = Rect::new(1, 1, 3, 3);
    push(&display, 100, 80, 4, small);
    assert_eq!(
        batch(&mut ws).await,
        vec![Msg::Rect {
            scanout: 0,
            rect: small,
            rgba: expected(small, 4),
            png: false
        }]
    );
    push(&display, 100, 80, 5, full);
    assert_eq!(
        batch(&mut ws).await,
        vec![Msg::Rect {
            scanout: 0,
            rect: full,
            rgba: expected(full, 5),
            png: true
        }]
    );
}

#[tokio::test]
async fn input_reaches_the_sink_and_is_released_on_disconnect() {
    let (_display, recorder, viewer) = setup(64, 48);
    let mut ws = connect(&viewer, "").await;
    hello(&mut ws).await;
    batch(&mut ws).await;
    for m in [
        r#"{"type":"key","code":30,"pressed":true}"#,
        r#"{"type":"key","code":30,"pressed":false}"#,
        r#"{"type":"pointer_move","scanout":0,"x":10,"y":500}"#,
        r#"{"type":"not_an_event"}"#,
        r#"{"type":"button","code":272,"pressed":true}"#,
        r#"{"type":"wheel","delta":-1}"#,
        r#"{"type":"key","code":42,"pressed":true}"#,
    ] {
        ws.send(Message::Text(m.into())).await.unwrap();
    }
    let want = vec![
        InputEvent::Key {
            code: 30,
            pressed: true,
        },
        InputEvent::Key {
            code: 30,
            pressed: false,
        },
        InputEvent::PointerMove {
            scanout: 0,
            x: 10,
            y: 47,
        },
        InputEvent::Button {
            code: 272,
            pressed: true,
        },
        InputEvent::Wheel { delta: -1 },
        InputEvent::Key {
            code: 42,
            pressed: true,
        },
    ];
    assert_eq!(recorder.wait_for(want.len()), want);
    // Going away abruptly releases what was held.
    drop(ws);
    let got = recorder.wait_for(want.len() + 2);
    assert_eq!(
        &got[want.len()..],
        &[
            InputEvent::Key {
                code: 42,
                pressed: false
            },
            InputEvent::Button {
                code: 272,
                pressed: false
            }
        ]
    );
    wait_until(|| viewer.viewers() == 0);
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

#[tokio::test]
async fn resize_requests_reach_the_gpu_and_bad_ones_do_not() {
    let (display, recorder, viewer) = setup(64, 48);
    let resizes = Arc::new(Resizes::default());
    display.connect_resizer(Some(resizes.clone() as Arc<dyn ResizeSink>));
    let mut ws = connect(&viewer, "").await;
    hello(&mut ws).await;
    batch(&mut ws).await;
    for m in [
        r#"{"type":"resize","scanout":0,"width":1000,"height":700}"#,
        // Ignored: unknown scanout, out of range, not u32s, incomplete.
        r#"{"type":"resize","scanout":1,"width":1000,"height":700}"#,
        r#"{"type":"resize","scanout":0,"width":31,"height":700}"#,
        r#"{"type":"resize","scanout":0,"width":1000,"height":8193}"#,
        r#"{"type":"resize","scanout":0,"width":-1000,"height":700}"#,
        r#"{"type":"resize","scanout":0,"width":1e9,"height":700}"#,
        r#"{"type":"resize","scanout":0,"width":1000}"#,
        r#"{"type":"resize","scanout":0,"width":8192,"height":32}"#,
        // Input still flows after all that.
        r#"{"type":"key","code":30,"pressed":true}"#,
    ] {
        ws.send(Message::Text(m.into())).await.unwrap();
    }
    recorder.wait_for(1);
    assert_eq!(
        *resizes.0.lock().unwrap(),
        vec![(0, 1000, 700), (0, 8192, 32)]
    );
    // The mode changes only when the guest switches.
    assert_eq!(display.mode(0), Some((64, 48)));
    // Without a GPU connected, a request is ignored (and the viewer stays).
    display.connect_resizer(None);
    ws.send(Message::Text(
        r#"{"type":"resize","scanout":0,"width":640,"height":480}"#.into(),
    ))
    .await
    .unwrap();
    ws.send(Message::Text(
        r#"{"type":"key","code":30,"pressed":false}"#.into(),
    ))
    .await
    .unwrap();
    recorder.wait_for(2);
    assert_eq!(resizes.0.lock().unwrap().len(), 2);
    assert_eq!(viewer.viewers(), 1);
}

/// Reads messages up to a sync, without acknowledging it; its number.
async fn until_sync(ws: &mut Ws) -> u64 {
    loop {
        if let Msg::Text(ServerText::Sync { seq }) = recv(ws).await.expect("connection closed") {
            return seq;
        }
    }
}

#[tokio::test]
async fn a_view_only_viewer_cannot_resize_the_guest() {
    let display = Arc::new(Display::new(1));
    display.set_mode(0, Some((64, 48)));
    let resizes = Arc::new(Resizes::default());
    display.connect_resizer(Some(resizes.clone() as Arc<dyn ResizeSink>));
    let viewer = WebViewer::start(loopback(), display.clone(), None).unwrap();
    let mut ws = connect(&viewer, "").await;
    hello(&mut ws).await;
    // Two batches unacknowledged: the server waits for an ack before the
    // third, so once the third arrives, the resize sent before the ack was
    // read.
    assert_eq!(until_sync(&mut ws).await, 1);
    push(&display, 64, 48, 2, Rect::new(0, 0, 4, 4));
    assert_eq!(until_sync(&mut ws).await, 2);
    push(&display, 64, 48, 3, Rect::new(0, 0, 4, 4));
    ws.send(Message::Text(
        r#"{"type":"resize","scanout":0,"width":640,"height":480}"#.into(),
    ))
    .await
    .unwrap();
    ws.send(Message::Text(r#"{"type":"ack","seq":1}"#.into()))
        .await
        .unwrap();
    assert_eq!(until_sync(&mut ws).await, 3);
    assert!(resizes.0.lock().unwrap().is_empty());
}

fn wait_until(mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test]
async fn two_viewers_and_one_that_leaves_mid_stream() {
    let (display, _, viewer) = setup(64, 48);
    let mut a = connect(&viewer, "?encoding=raw").await;
    let mut b = connect(&viewer, "?encoding=raw").await;
    for ws in [&mut a, &mut b] {
        hello(ws).await;
        batch(ws).await;
    }
    assert_eq!(viewer.viewers(), 2);
    let r = Rect::new(0, 0, 8, 8);
    push(&display, 64, 48, 7, r);
    for ws in [&mut a, &mut b] {
        assert_eq!(
            batch(ws).await,
            vec![Msg::Rect {
                scanout: 0,
                rect: r,
                rgba: expected(r, 7),
                png: false
            }]
        );
    }
    // b drops in the middle of a stream of full frames.
    let full = Rect::new(0, 0, 64, 48);
    for seed in 10..20 {
        push(&display, 64, 48, seed, full);
    }
    let _ = recv(&mut b).await;
    drop(b);
    for seed in 20..40 {
        push(&display, 64, 48, seed, full);
    }
    wait_until(|| viewer.viewers() == 1);
    // a still works, and catches up with the last frame.
    let mut last = None;
    while last != Some(39) {
        for m in batch(&mut a).await {
            if let Msg::Rect { rgba, rect, .. } = m {
                assert_eq!(rect, full);
                last = Some(rgba[2]);
            }
        }
    }
    push(&display, 64, 48, 41, r);
    assert_eq!(
        batch(&mut a).await,
        vec![Msg::Rect {
            scanout: 0,
            rect: r,
            rgba: expected(r, 41),
            png: false
        }]
    );
    assert_eq!(display.subscribers(), 1);
}

#[tokio::test]
async fn a_slow_viewer_skips_frames() {
    let (display, _, viewer) = setup(64, 48);
    let mut ws = connect(&viewer, "?encoding=raw").await;
    hello(&mut ws).await;
    // Do not acknowledge: read the first batches only.
    let mut syncs = 0;
    let mut sent = 0;
    let full = Rect::new(0, 0, 64, 48);
    while syncs < 2 {
        push(&display, 64, 48, sent, full);
        sent += 1;
        if let Some(Msg::Text(ServerText::Sync { .. })) = recv(&mut ws).await {
            syncs += 1;
        }
    }
    // Window full: the server waits. Many frames later...
    for seed in 100..=200 {
        push(&display, 64, 48, seed, full);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ...it has sent nothing more.
    assert!(tokio::time::timeout(Duration::from_millis(200), ws.next())
        .await
        .is_err());
    ws.send(Message::Text(r#"{"type":"ack","seq":2}"#.into()))
        .await
        .unwrap();
    // One coalesced batch with the latest frame.
    let got = batch(&mut ws).await;
    assert_eq!(
        got,
        vec![Msg::Rect {
            scanout: 0,
            rect: full,
            rgba: expected(full, 200),
            png: false
        }]
    );
}

fn http_get(addr: SocketAddr, path: &str) -> (String, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8(out[..split].to_vec()).unwrap();
    (head, out[split + 4..].to_vec())
}

#[test]
fn the_page_and_the_screenshot() {
    let (display, _, viewer) = setup(20, 10);
    let (head, body) = http_get(viewer.local_addr(), "/");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head
        .to_ascii_lowercase()
        .contains("content-type: text/html"));
    let page = String::from_utf8(body).unwrap();
    assert!(page.contains("canvas"));
    assert!(page.contains(r#""KeyA":30"#));
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no external assets"
    );

    let (head, body) = http_get(viewer.local_addr(), "/screenshot.png?display=0");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, display.screenshot(0).unwrap());
    let (head, body) = http_get(viewer.local_addr(), "/screenshot.png?display=3");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    assert_eq!(body, b"display 3 does not exist (the VM has 1)\n");
    let (head, _) = http_get(viewer.local_addr(), "/nothing");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let (head, _) = http_get(viewer.local_addr(), "/ws");
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
}

#[tokio::test]
async fn cross_origin_viewers_are_refused() {
    let (_display, _, viewer) = setup(8, 8);
    let addr = viewer.local_addr();
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("origin", "http://evil.example".parse().unwrap());
    let err = tokio_tungstenite::connect_async(req).await.unwrap_err();
    assert!(err.to_string().contains("403"), "{err}");
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("origin", format!("http://{addr}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    hello(&mut ws).await;
}

#[tokio::test]
async fn view_only_viewers_and_stopping() {
    let display = Arc::new(Display::new(2));
    let viewer = WebViewer::start(loopback(), display.clone(), None).unwrap();
    let addr = viewer.local_addr();
    let mut ws = connect(&viewer, "").await;
    assert_eq!(
        hello(&mut ws).await,
        ServerText::Hello {
            version: 1,
            scanouts: 2,
            input: false
        }
    );
    // Both scanouts off: modes only.
    let first = batch(&mut ws).await;
    assert!(first.contains(&Msg::Text(ServerText::Mode {
        scanout: 1,
        width: 0,
        height: 0,
        enabled: false
    })));
    ws.send(Message::Text(
        r#"{"type":"key","code":30,"pressed":true}"#.into(),
    ))
    .await
    .unwrap();
    // Stopping closes the viewer and the port.
    tokio::task::spawn_blocking(move || viewer.stop())
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(TIMEOUT, ws.next()).await.unwrap() {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
            Some(Ok(_)) => {}
        }
    }
    assert!(std::net::TcpStream::connect(addr).is_err());
}

#[test]
fn binding_a_taken_port_is_an_error() {
    let display = Arc::new(Display::new(1));
    let a = WebViewer::start(loopback(), display.clone(), None).unwrap();
    let err = WebViewer::start(a.local_addr(), display, None).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("cannot listen on {}", a.local_addr())
    );
}

#[tokio::test]
async fn hostile_clients_harm_nobody_else() {
    let (display, recorder, viewer) = setup(16, 16);
    let mut good = connect(&viewer, "?encoding=raw").await;
    hello(&mut good).await;
    batch(&mut good).await;

    // Garbage of every kind, then a message over the size limit.
    let mut bad = connect(&viewer, "").await;
    for m in [
        Message::Binary(vec![0xff; 100].into()),
        Message::Text("not json".into()),
        Message::Text(r#"{"type":"ack","seq":18446744073709551615}"#.into()),
        Message::Text(
            format!(
                r#"{{"type":"key","code":30,"pressed":true,"x":"{}"}}"#,
                "y".repeat(8000)
            )
            .into(),
        ),
        Message::Ping(vec![1, 2, 3].into()),
    ] {
        bad.send(m).await.unwrap();
    }
    let _ = bad.send(Message::Text("z".repeat(64 * 1024).into())).await;
    // The oversized message ends that connection.
    loop {
        match tokio::time::timeout(TIMEOUT, bad.next()).await.unwrap() {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
            Some(Ok(_)) => {}
        }
    }
    wait_until(|| viewer.viewers() == 1);
    assert!(recorder.0.lock().unwrap().is_empty());

    // A raw TCP client that sends half a request and stalls.
    let mut stalled = std::net::TcpStream::connect(viewer.local_addr()).unwrap();
    stalled
        .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        .unwrap();

    let r = Rect::new(2, 2, 3, 3);
    push(&display, 16, 16, 9, r);
    assert_eq!(
        batch(&mut good).await,
        vec![Msg::Rect {
            scanout: 0,
            rect: r,
            rgba: expected(r, 9),
            png: false
        }]
    );
    drop(stalled);
}

#[tokio::test]
async fn viewers_are_limited() {
    let (_display, _, viewer) = setup(4, 4);
    let mut all = Vec::new();
    for _ in 0..pv_display::web::MAX_VIEWERS {
        let mut ws = connect(&viewer, "").await;
        hello(&mut ws).await;
        all.push(ws);
    }
    let url = format!("ws://{}/ws", viewer.local_addr());
    let err = tokio_tungstenite::connect_async(url.clone())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");
    all.pop();
    wait_until(|| viewer.viewers() == pv_display::web::MAX_VIEWERS - 1);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    hello(&mut ws).await;
}
