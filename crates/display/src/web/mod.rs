//! The web viewer: an HTTP server (hyper) on its own thread,
//! `display-web`, with a current-thread tokio runtime. `GET /` is a page
//! embedded in the binary with a canvas per scanout; `GET /ws` is a
//! WebSocket that streams the scanouts ([`protocol`]) and takes keyboard
//! and mouse input for the guest and, when the page fits the guest to its
//! window, requests for a new display size ([`Display::request_size`]); `GET /screenshot.png?display=N` is the
//! same PNG as the API's screenshot.
//!
//! Each viewer is a [`Subscription`] to the [`Display`]: a task waits for
//! its wake-up, takes the coalesced changes, encodes them on tokio's
//! blocking pool and sends them, keeping at most [`protocol::WINDOW`]
//! batches unacknowledged. A viewer that goes away drops its subscription
//! and releases the keys and buttons it held; nothing else notices.
//!
//! WebSocket connections whose `Origin` is not this server are refused,
//! so a web page elsewhere cannot drive the guest through a browser on the
//! same host. The server listens on loopback unless told otherwise.

pub mod protocol;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{watch, Notify};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::keymap::keymap_json;
use crate::{Display, DisplayError, InputSink, Subscription};
use protocol::{
    encode_update, parse_client, ClientMessage, EncodingPolicy, InputFilter, Outgoing, ServerText,
};

const PAGE_TEMPLATE: &str = include_str!("viewer.html");
/// How long a client may take to send a request's head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Viewers connected at once, at most.
pub const MAX_VIEWERS: usize = 32;

type Body = Full<Bytes>;

/// A running web viewer. Stops when dropped.
pub struct WebViewer {
    local_addr: SocketAddr,
    viewers: Arc<AtomicUsize>,
    stop: Option<watch::Sender<bool>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for WebViewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebViewer")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

struct Ctx {
    display: Arc<Display>,
    input: Option<Arc<dyn InputSink>>,
    page: Bytes,
    viewers: Arc<AtomicUsize>,
    stop: watch::Receiver<bool>,
}

impl WebViewer {
    /// Serves `display` on `addr` (port 0 picks a free port); keyboard and
    /// mouse from the page go to `input` (None: the page is view-only).
    pub fn start(
        addr: SocketAddr,
        display: Arc<Display>,
        input: Option<Arc<dyn InputSink>>,
    ) -> Result<WebViewer, DisplayError> {
        let bind_err = |source| DisplayError::Bind { addr, source };
        let listener = std::net::TcpListener::bind(addr).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let local_addr = listener.local_addr().map_err(bind_err)?;
        if !addr.ip().is_loopback() {
            log::warn!(
                "display: the web viewer listens on {local_addr}, not a loopback address: whoever reaches it sees the guest's screens{}",
                if input.is_some() { " and types into the guest" } else { "" }
            );
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(DisplayError::Runtime)?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let viewers = Arc::new(AtomicUsize::new(0));
        let ctx = Arc::new(Ctx {
            display,
            input,
            page: Bytes::from(PAGE_TEMPLATE.replace("/*KEYMAP*/{}", &keymap_json())),
            viewers: viewers.clone(),
            stop: stop_rx,
        });
        let thread = std::thread::Builder::new()
            .name("display-web".into())
            .spawn(move || {
                pv_seccomp::apply_or_abort(pv_seccomp::ThreadKind::DisplayWeb);
                runtime.block_on(serve(listener, ctx));
                runtime.shutdown_timeout(Duration::from_secs(2));
            })
            .map_err(DisplayError::Thread)?;
        log::info!("display: web viewer on http://{local_addr}/");
        Ok(WebViewer {
            local_addr,
            viewers,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// How many viewers (WebSocket sessions) are connected.
    pub fn viewers(&self) -> usize {
        self.viewers.load(Ordering::SeqCst)
    }

    /// Stops serving: closes the listener and every viewer, and waits for
    /// the thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("display: the display-web thread panicked");
            }
        }
    }
}

impl Drop for WebViewer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn serve(listener: std::net::TcpListener, ctx: Arc<Ctx>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            log::error!("display: the web viewer cannot use its socket: {e}");
            return;
        }
    };
    let mut stop = ctx.stop.clone();
    loop {
        tokio::select! {
            _ = stop.wait_for(|&s| s) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tokio::spawn(connection(stream, peer, ctx.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off.
                    log::warn!("display: web viewer accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    log::debug!("display: web viewer stopped");
}

async fn connection(stream: tokio::net::TcpStream, peer: SocketAddr, ctx: Arc<Ctx>) {
    let _ = stream.set_nodelay(true);
    let mut stop = ctx.stop.clone();
    let service_ctx = ctx.clone();
    let service = service_fn(move |req| {
        let ctx = service_ctx.clone();
        async move { Ok::<_, Infallible>(route(req, ctx).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::select! {
        r = conn => if let Err(e) = r {
            log::debug!("display: web connection from {peer}: {e}");
        },
        _ = stop.wait_for(|&s| s) => {}
    }
}

fn response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut msg = msg.into();
    msg.push('\n');
    response(status, "text/plain; charset=utf-8", msg)
}

async fn route(req: Request<Incoming>, ctx: Arc<Ctx>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/" | "/index.html") => {
            let mut r = response(StatusCode::OK, "text/html; charset=utf-8", ctx.page.clone());
            r.headers_mut().insert(
                "content-security-policy",
                HeaderValue::from_static(
                    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src blob: data:; connect-src 'self'",
                ),
            );
            r
        }
        (&Method::GET, "/ws") => upgrade(req, ctx),
        (&Method::GET, "/screenshot.png") => screenshot(req.uri().query(), ctx).await,
        (_, "/" | "/index.html" | "/ws" | "/screenshot.png") => {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET");
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET"));
            r
        }
        _ => text(StatusCode::NOT_FOUND, format!("no such page: {path}")),
    }
}

async fn screenshot(query: Option<&str>, ctx: Arc<Ctx>) -> Response<Body> {
    let mut index = 0;
    for pair in query.unwrap_or("").split('&') {
        if let Some(v) = pair.strip_prefix("display=") {
            match v.parse() {
                Ok(n) => index = n,
                Err(_) => {
                    return text(StatusCode::BAD_REQUEST, format!("bad display number {v:?}"))
                }
            }
        }
    }
    let display = ctx.display.clone();
    match tokio::task::spawn_blocking(move || display.screenshot(index)).await {
        Ok(Ok(png)) => response(StatusCode::OK, "image/png", png),
        Ok(Err(e @ (DisplayError::NoSuchDisplay { .. } | DisplayError::NothingShown(_)))) => {
            text(StatusCode::NOT_FOUND, e.to_string())
        }
        Ok(Err(e)) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "screenshot failed"),
    }
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Whether a browser's `Origin` names this server (the `Host` it asked).
/// Clients that send no Origin (not browsers) are let in.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = header_str(headers, header::ORIGIN) else {
        return true;
    };
    let Some(host) = header_str(headers, header::HOST) else {
        return false;
    };
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    origin_host.is_some_and(|h| h.eq_ignore_ascii_case(host))
}

fn upgrade(mut req: Request<Incoming>, ctx: Arc<Ctx>) -> Response<Body> {
    let headers = req.headers();
    let is_upgrade = header_str(headers, header::UPGRADE)
        .is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
        && header_str(headers, header::CONNECTION).is_some_and(|c| {
            c.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return text(StatusCode::BAD_REQUEST, "a WebSocket endpoint");
    };
    if !is_upgrade {
        return text(StatusCode::BAD_REQUEST, "a WebSocket endpoint");
    }
    if header_str(headers, header::SEC_WEBSOCKET_VERSION) != Some("13") {
        let mut r = text(StatusCode::UPGRADE_REQUIRED, "WebSocket version 13 only");
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return r;
    }
    if !same_origin(headers) {
        log::warn!(
            "display: refused a viewer from origin {:?}",
            header_str(headers, header::ORIGIN).unwrap_or("")
        );
        return text(StatusCode::FORBIDDEN, "cross-origin viewers are refused");
    }
    let Some(slot) = ViewerSlot::take(&ctx.viewers) else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "too many viewers");
    };
    let accept = derive_accept_key(key.as_bytes());
    let policy = EncodingPolicy::from_query(req.uri().query());
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let config = WebSocketConfig::default()
                    .max_message_size(Some(protocol::MAX_CLIENT_MESSAGE * 4))
                    .max_frame_size(Some(protocol::MAX_CLIENT_MESSAGE * 4));
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                viewer(ws, ctx, policy).await;
            }
            Err(e) => log::debug!("display: WebSocket upgrade failed: {e}"),
        }
        drop(slot);
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

/// One of the [`MAX_VIEWERS`] places, given back when dropped.
struct ViewerSlot(Arc<AtomicUsize>);

impl ViewerSlot {
    fn take(count: &Arc<AtomicUsize>) -> Option<Self> {
        count
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < MAX_VIEWERS).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(count.clone()))
    }
}

impl Drop for ViewerSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A viewer's input on its way to the guest; what it still holds is
/// released when it goes (however it goes: closed, failed, or the server
/// stopping).
struct ViewerInput {
    sink: Option<Arc<dyn InputSink>>,
    display: Arc<Display>,
    filter: InputFilter,
}

impl ViewerInput {
    fn handle(&mut self, ev: crate::InputEvent) {
        if let Some(sink) = &self.sink {
            if let Some(ev) = self.filter.filter(ev, &self.display) {
                sink.send(ev);
            }
        }
    }
}

impl Drop for ViewerInput {
    fn drop(&mut self) {
        if let Some(sink) = &self.sink {
            for ev in self.filter.release_all() {
                sink.send(ev);
            }
        }
    }
}

fn message(m: Outgoing) -> Message {
    match m {
        Outgoing::Text(t) => Message::Text(t.into()),
        Outgoing::Binary(b) => Message::Binary(b.into()),
    }
}

/// Takes `sub`'s changes and encodes them (on the blocking pool: copying
/// and PNG-encoding a large frame takes milliseconds).
async fn fetch(
    display: &Arc<Display>,
    sub: &Arc<Subscription>,
    policy: EncodingPolicy,
) -> Vec<Message> {
    let display = display.clone();
    let sub = sub.clone();
    let job = tokio::task::spawn_blocking(move || {
        display
            .updates(&sub)
            .into_iter()
            .filter_map(|u| match encode_update(u, policy) {
                Ok(m) => Some(message(m)),
                Err(e) => {
                    log::warn!("display: cannot encode an update for a viewer: {e}");
                    None
                }
            })
            .collect::<Vec<_>>()
    });
    job.await.unwrap_or_default()
}

/// A viewer's "fit guest to window": the guest is asked for the size (a
/// view-only viewer does not change the guest).
fn request_size(ctx: &Ctx, scanout: u32, width: u32, height: u32) {
    if ctx.input.is_none() {
        log::debug!(
            "display: a view-only viewer asked for {width}x{height} on display {scanout}, ignored"
        );
        return;
    }
    match ctx.display.request_size(scanout, width, height) {
        Ok(()) => log::debug!("display {scanout}: a viewer asks the guest for {width}x{height}"),
        Err(e) => log::debug!("display: a viewer's resize ignored: {e}"),
    }
}

async fn viewer<S>(ws: WebSocketStream<S>, ctx: Arc<Ctx>, policy: EncodingPolicy)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    log::debug!("display: viewer connected");
    let wake = Arc::new(Notify::new());
    let waker = wake.clone();
    let sub = Arc::new(ctx.display.subscribe(Box::new(move || waker.notify_one())));
    let (mut tx, mut rx) = ws.split();
    let (ack_tx, mut ack_rx) = watch::channel(0u64);
    let mut input = ViewerInput {
        sink: ctx.input.clone(),
        display: ctx.display.clone(),
        filter: InputFilter::new(),
    };
    let mut stop = ctx.stop.clone();

    let writer = async {
        let hello = ServerText::Hello {
            version: protocol::VERSION,
            scanouts: ctx.display.count(),
            input: ctx.input.is_some(),
        };
        tx.send(message(hello.to_outgoing())).await?;
        let mut seq = 0u64;
        loop {
            if ack_rx
                .wait_for(|&acked| seq.saturating_sub(acked) < protocol::WINDOW)
                .await
                .is_err()
            {
                return Ok(());
            }
            let batch = fetch(&ctx.display, &sub, policy).await;
            if batch.is_empty() {
                wake.notified().await;
                continue;
            }
            for m in batch {
                tx.feed(m).await?;
            }
            seq += 1;
            tx.feed(message(ServerText::Sync { seq }.to_outgoing()))
                .await?;
            tx.flush().await?;
        }
    };
    let reader = async {
        while let Some(m) = rx.next().await {
            match m {
                Ok(Message::Text(t)) => match parse_client(&t) {
                    Ok(ClientMessage::Ack { seq }) => {
                        ack_tx.send_if_modified(|acked| {
                            let newer = seq > *acked;
                            if newer {
                                *acked = seq;
                            }
                            newer
                        });
                    }
                    Ok(ClientMessage::Input(ev)) => input.handle(ev),
                    Ok(ClientMessage::Resize {
                        scanout,
                        width,
                        height,
                    }) => request_size(&ctx, scanout, width, height),
                    Err(e) => log::debug!("display: viewer sent something else: {e}"),
                },
                Ok(Message::Close(_)) => break,
                Ok(_) => {}
                Err(e) => {
                    log::debug!("display: viewer connection: {e}");
                    break;
                }
            }
        }
    };
    let result: Result<(), tokio_tungstenite::tungstenite::Error> = tokio::select! {
        r = writer => r,
        _ = reader => Ok(()),
        _ = stop.wait_for(|&s| s) => Ok(()),
    };
    if let Err(e) = result {
        log::debug!("display: viewer connection: {e}");
    }
    // Say goodbye if the connection still works; never wait long for it.
    let _ = tokio::time::timeout(Duration::from_millis(500), tx.close()).await;
    drop(input);
    log::debug!("display: viewer gone");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn origin_must_be_this_server() {
        assert!(same_origin(&headers(&[("host", "127.0.0.1:8080")])));
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://evil.example")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8081")
        ])));
        assert!(!same_origin(&headers(&[(
            "origin",
            "http://127.0.0.1:8080"
        )])));
        assert!(!same_origin(&headers(&[("host", "a"), ("origin", "null")])));
    }

    #[test]
    fn the_page_gets_the_keymap() {
        assert!(PAGE_TEMPLATE.contains("/*KEYMAP*/{}"));
        let page = PAGE_TEMPLATE.replace("/*KEYMAP*/{}", &keymap_json());
        assert!(page.contains(r#""KeyA":30"#));
    }
}
