//! Routing and handlers: a request becomes a JSON (or text, or PNG) answer.
//!
//! Unknown paths are 404, a known path with the wrong method 405 (with an
//! `Allow` header), a PUT body other than nothing or `{}` 400 (413 when it
//! is too large; `vm.resize` takes its own body), a bad query of
//! `vm.screenshot` 400, an illegal lifecycle transition 409 and any other
//! failure 500. Controller and display calls run on tokio's blocking pool:
//! `vm.shutdown` waits up to the grace period, the others may wait for the
//! controller's lock or the display. Other endpoints ignore the query
//! string.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use pv_vmm::control::{ControlError, VmController, VmState};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::{json, Value};

use crate::{
    metrics, GpuInventory, ResizeError, Resizes, ScreenshotError, Screenshots, API_PREFIX,
    MAX_DISPLAY_SIDE, MIN_DISPLAY_SIDE, PNG_SIGNATURE, VERSION,
};

/// Largest request body accepted.
const MAX_BODY: usize = 64 * 1024;
/// How long a client may take to send its body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// What every request handler shares.
pub(crate) struct State {
    pub controller: Arc<VmController>,
    pub gpus: GpuInventory,
    /// `None`: the VM has no display (`vm.screenshot` answers 409).
    pub screenshots: Option<Screenshots>,
    /// `None`: the VM has no display (`vm.resize` answers 409).
    pub resizes: Option<Resizes>,
}

/// One endpoint of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Ping,
    Gpus,
    Info,
    Pause,
    Resume,
    Reboot,
    PowerButton,
    Shutdown,
    Counters,
    Metrics,
    Screenshot,
    Resize,
}

impl Endpoint {
    /// Every endpoint, in the order of the API reference.
    pub const ALL: [Endpoint; 12] = [
        Endpoint::Ping,
        Endpoint::Gpus,
        Endpoint::Info,
        Endpoint::Pause,
        Endpoint::Resume,
        Endpoint::Reboot,
        Endpoint::PowerButton,
        Endpoint::Shutdown,
        Endpoint::Counters,
        Endpoint::Metrics,
        Endpoint::Screenshot,
        Endpoint::Resize,
    ];

    /// The name after `/api/v1/`, e.g. `vm.pause`.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Ping => "vmm.ping",
            Endpoint::Gpus => "vmm.gpus",
            Endpoint::Info => "vm.info",
            Endpoint::Pause => "vm.pause",
            Endpoint::Resume => "vm.resume",
            Endpoint::Reboot => "vm.reboot",
            Endpoint::PowerButton => "vm.power-button",
            Endpoint::Shutdown => "vm.shutdown",
            Endpoint::Counters => "vm.counters",
            Endpoint::Metrics => "vm.metrics",
            Endpoint::Screenshot => "vm.screenshot",
            Endpoint::Resize => "vm.resize",
        }
    }

    /// The full path, e.g. `/api/v1/vm.pause`.
    pub fn path(self) -> String {
        format!("{API_PREFIX}/{}", self.name())
    }

    /// `GET` for queries, `PUT` for actions.
    pub fn method(self) -> Method {
        match self {
            Endpoint::Ping
            | Endpoint::Gpus
            | Endpoint::Info
            | Endpoint::Counters
            | Endpoint::Metrics
            | Endpoint::Screenshot => Method::GET,
            Endpoint::Pause
            | Endpoint::Resume
            | Endpoint::Reboot
            | Endpoint::PowerButton
            | Endpoint::Shutdown
            | Endpoint::Resize => Method::PUT,
        }
    }

    /// The endpoint at `path` (the query string already removed).
    pub fn from_path(path: &str) -> Option<Self> {
        let name = path.strip_prefix(API_PREFIX)?.strip_prefix('/')?;
        Self::ALL.into_iter().find(|e| e.name() == name)
    }
}

/// An answer before it becomes an HTTP response.
#[derive(Debug)]
enum Reply {
    Json(Value),
    Text(String),
    /// A whole PNG file.
    Png(Vec<u8>),
    NoContent,
    Error {
        status: StatusCode,
        message: String,
        allow: Option<Method>,
    },
}

impl Reply {
    fn error(status: StatusCode, message: impl Into<String>) -> Self {
        Reply::Error {
            status,
            message: message.into(),
            allow: None,
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Reply::Json(_) | Reply::Text(_) | Reply::Png(_) => StatusCode::OK,
            Reply::NoContent => StatusCode::NO_CONTENT,
            Reply::Error { status, .. } => *status,
        }
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let status = self.status();
        let (content_type, body, allow) = match self {
            Reply::Json(v) => (Some(JSON), json_bytes(&v), None),
            Reply::Text(t) => (Some(metrics::CONTENT_TYPE), Bytes::from(t), None),
            Reply::Png(png) => (Some(PNG), Bytes::from(png), None),
            Reply::NoContent => (None, Bytes::new(), None),
            Reply::Error { message, allow, .. } => {
                (Some(JSON), json_bytes(&json!({ "error": message })), allow)
            }
        };
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        if let Some(ct) = content_type {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
        }
        if let Some(method) = allow {
            if let Ok(v) = HeaderValue::from_str(method.as_str()) {
                headers.insert(ALLOW, v);
            }
        }
        response
    }
}

const JSON: &str = "application/json";
const PNG: &str = "image/png";

/// What an endpoint was asked, beyond its path: only `vm.screenshot` (its
/// query) and `vm.resize` (its body) take parameters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Params {
    /// The scanout of `vm.screenshot` or `vm.resize` (default 0).
    display: u32,
    /// The width and height `vm.resize` asks for.
    size: (u32, u32),
}

fn json_bytes(v: &Value) -> Bytes {
    let mut out = serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec());
    out.push(b'\n');
    Bytes::from(out)
}

/// The service function: never fails, whatever the client sent.
pub(crate) async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let reply = route(state, req).await;
    match &reply {
        Reply::Error {
            status, message, ..
        } => log::info!("api: {method} {path}: {} {message}", status.as_u16()),
        r => log::debug!("api: {method} {path}: {}", r.status().as_u16()),
    }
    Ok(reply.into_response())
}

async fn route(state: Arc<State>, req: Request<Incoming>) -> Reply {
    let path = req.uri().path();
    let Some(endpoint) = Endpoint::from_path(path) else {
        return Reply::error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}"));
    };
    if req.method() != endpoint.method() {
        return Reply::Error {
            status: StatusCode::METHOD_NOT_ALLOWED,
            message: format!(
                "{} takes {}, not {}",
                endpoint.name(),
                endpoint.method(),
                req.method()
            ),
            allow: Some(endpoint.method()),
        };
    }
    let mut params = Params::default();
    if endpoint == Endpoint::Screenshot {
        match screenshot_display(req.uri().query()) {
            Ok(display) => params.display = display,
            Err(message) => return Reply::error(StatusCode::BAD_REQUEST, message),
        }
    }
    if endpoint.method() == Method::PUT {
        let body = match read_body(req.into_body()).await {
            Ok(body) => body,
            Err(reply) => return reply,
        };
        let checked = if endpoint == Endpoint::Resize {
            parse_resize(&body).map(|r| {
                params.display = r.display;
                params.size = (r.width, r.height);
            })
        } else {
            check_empty_body(endpoint, &body)
        };
        if let Err(message) = checked {
            return Reply::error(StatusCode::BAD_REQUEST, message);
        }
    }
    match tokio::task::spawn_blocking(move || execute(endpoint, params, &state)).await {
        Ok(reply) => reply,
        Err(e) => {
            log::error!("api: the {} handler failed: {e}", endpoint.name());
            Reply::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the {} handler failed", endpoint.name()),
            )
        }
    }
}

/// The `display` of `vm.screenshot`'s query: absent is 0; an unknown key,
/// a repeated `display` or a value that is not a number is an error that
/// says which.
fn screenshot_display(query: Option<&str>) -> Result<u32, String> {
    let mut display = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != "display" {
            return Err(format!(
                "unknown query parameter '{key}': vm.screenshot takes only display"
            ));
        }
        if display.is_some() {
            return Err("the query parameter display is given more than once".into());
        }
        display = Some(parse_display(value)?);
    }
    Ok(display.unwrap_or(0))
}

/// A display number: decimal digits only, at most `u32::MAX`.
fn parse_display(value: &str) -> Result<u32, String> {
    if value.is_empty() {
        return Err("the query parameter display needs a value: display=0, display=1, …".into());
    }
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "invalid display '{value}': expected a display number (0, 1, …)"
        ));
    }
    value
        .parse()
        .map_err(|_| format!("invalid display '{value}': the number is too large"))
}

/// A PUT's whole body: 413 past [`MAX_BODY`], 400 when it cannot be read
/// in time.
async fn read_body(body: Incoming) -> Result<Bytes, Reply> {
    match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY).collect()).await {
        Err(_) => Err(Reply::error(
            StatusCode::BAD_REQUEST,
            "timed out reading the request body",
        )),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(Reply::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {} KiB", MAX_BODY / 1024),
        )),
        Ok(Err(_)) => Err(Reply::error(
            StatusCode::BAD_REQUEST,
            "cannot read the request body",
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// Actions take no parameters: the body must be empty or `{}`.
fn check_empty_body(endpoint: Endpoint, bytes: &[u8]) -> Result<(), String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| format!("malformed JSON in the request body: {e}"))?;
    match value {
        Value::Object(map) => match map.keys().next() {
            None => Ok(()),
            Some(field) => Err(format!(
                "unknown field '{field}': {} takes no fields (send no body or {{}})",
                endpoint.name()
            )),
        },
        _ => Err(format!(
            "the body of {} must be empty or a JSON object ({{}})",
            endpoint.name()
        )),
    }
}

/// What `vm.resize` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ResizeRequest {
    display: u32,
    width: u32,
    height: u32,
}

/// The body `vm.resize` takes, for its error messages.
const RESIZE_BODY: &str = r#"{"width": W, "height": H} or {"display": N, "width": W, "height": H}"#;

/// `vm.resize`'s body: a JSON object with `width` and `height`, each a
/// whole number within [`MIN_DISPLAY_SIDE`]..=[`MAX_DISPLAY_SIDE`], and
/// optionally `display` (default 0). Anything else (another field, a field
/// given twice, a negative, fractional, too large or non-numeric value) is
/// an error that says what is wrong.
fn parse_resize(bytes: &[u8]) -> Result<ResizeRequest, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(format!("vm.resize needs a body: {RESIZE_BODY}"));
    }
    let malformed = |e: serde_json::Error| format!("malformed JSON in the request body: {e}");
    let value: Value = serde_json::from_slice(bytes).map_err(malformed)?;
    if !value.is_object() {
        return Err(format!(
            "the body of vm.resize must be a JSON object: {RESIZE_BODY}"
        ));
    }
    // Read again keeping every field as sent: a repeated field is refused
    // rather than the last one silently winning.
    let Fields(fields) = serde_json::from_slice(bytes).map_err(malformed)?;
    let (mut display, mut width, mut height) = (None, None, None);
    for (name, value) in &fields {
        let slot = match name.as_str() {
            "display" => &mut display,
            "width" => &mut width,
            "height" => &mut height,
            _ => {
                return Err(format!(
                    "unknown field '{}': vm.resize takes display, width and height",
                    shorten(name)
                ))
            }
        };
        if slot.replace(value).is_some() {
            return Err(format!("the field '{name}' is given more than once"));
        }
    }
    Ok(ResizeRequest {
        display: display.map_or(Ok(0), resize_display)?,
        width: side("width", width)?,
        height: side("height", height)?,
    })
}

/// `display` of `vm.resize`: a display number, at most `u32::MAX`.
fn resize_display(value: &Value) -> Result<u32, String> {
    match value.as_u64() {
        Some(n) => {
            u32::try_from(n).map_err(|_| format!("invalid display {n}: the number is too large"))
        }
        None => Err(format!(
            "invalid display {}: expected a display number (0, 1, …)",
            shown(value)
        )),
    }
}

/// `width` or `height` of `vm.resize`.
fn side(name: &str, value: Option<&Value>) -> Result<u32, String> {
    let range = format!("{MIN_DISPLAY_SIDE}..={MAX_DISPLAY_SIDE}");
    let Some(value) = value else {
        return Err(format!(
            "missing field '{name}': vm.resize needs width and height, each within {range} pixels"
        ));
    };
    if let Some(n) = value.as_u64() {
        return match u32::try_from(n) {
            Ok(n) if (MIN_DISPLAY_SIDE..=MAX_DISPLAY_SIDE).contains(&n) => Ok(n),
            _ => Err(format!(
                "invalid {name} {n}: each side must be within {range} pixels"
            )),
        };
    }
    match value.as_i64() {
        Some(n) => Err(format!(
            "invalid {name} {n}: each side must be within {range} pixels"
        )),
        None => Err(format!(
            "invalid {name} {}: expected a whole number of pixels within {range}",
            shown(value)
        )),
    }
}

/// A JSON value for a message: at most about 40 characters of it.
fn shown(value: &Value) -> String {
    shorten(&value.to_string())
}

fn shorten(text: &str) -> String {
    const MAX: usize = 40;
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// A JSON object's fields in the order sent, repeats kept.
struct Fields(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = Fields;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
                let mut fields = Vec::new();
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    fields.push(entry);
                }
                Ok(Fields(fields))
            }
        }
        deserializer.deserialize_map(FieldsVisitor)
    }
}

/// Runs an endpoint's work (on the blocking pool).
fn execute(endpoint: Endpoint, params: Params, state: &State) -> Reply {
    let c = &state.controller;
    match endpoint {
        Endpoint::Ping => Reply::Json(json!({
            "version": VERSION,
            "pid": std::process::id(),
        })),
        Endpoint::Gpus => match (state.gpus)() {
            Ok(v) => Reply::Json(v),
            Err(message) => Reply::error(StatusCode::INTERNAL_SERVER_ERROR, message),
        },
        Endpoint::Info => match serde_json::to_value(c.info()) {
            Ok(v) => Reply::Json(v),
            Err(e) => Reply::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot encode the VM info: {e}"),
            ),
        },
        Endpoint::Pause => lifecycle(c.pause()),
        Endpoint::Resume => lifecycle(c.resume()),
        Endpoint::Reboot => lifecycle(c.reboot()),
        Endpoint::PowerButton => lifecycle(c.power_button()),
        Endpoint::Shutdown => lifecycle(c.shutdown()),
        Endpoint::Counters => Reply::Json(c.counters()),
        Endpoint::Metrics => Reply::Text(metrics::render(&c.counters())),
        Endpoint::Screenshot => screenshot(state.screenshots.as_ref(), params.display),
        Endpoint::Resize => resize(state, params),
    }
}

/// Asks the display side to pass `params`' size for its display to the
/// guest: only while the VM is Running, like the power button (the guest
/// must be there to switch).
fn resize(state: &State, params: Params) -> Reply {
    let Some(resize) = state.resizes.as_ref() else {
        return Reply::error(
            StatusCode::CONFLICT,
            "the VM has no display: start it with --gpu",
        );
    };
    let vm_state = state.controller.state();
    if vm_state != VmState::Running {
        let conflict = ControlError::Conflict {
            action: "resize a display of",
            state: vm_state,
        };
        return Reply::error(StatusCode::CONFLICT, conflict.to_string());
    }
    let (width, height) = params.size;
    match resize(params.display, width, height) {
        Ok(()) => Reply::NoContent,
        Err(ResizeError::NoSuchDisplay(message)) => Reply::error(StatusCode::NOT_FOUND, message),
        Err(ResizeError::BadSize(message)) => Reply::error(StatusCode::BAD_REQUEST, message),
        Err(ResizeError::Unavailable(message)) => Reply::error(StatusCode::CONFLICT, message),
        Err(ResizeError::Failed(message)) => {
            log::error!("api: resizing display {}: {message}", params.display);
            Reply::error(StatusCode::INTERNAL_SERVER_ERROR, message)
        }
    }
}

/// Asks the display side for scanout `display` as a PNG.
fn screenshot(screenshots: Option<&Screenshots>, display: u32) -> Reply {
    let Some(take) = screenshots else {
        return Reply::error(
            StatusCode::CONFLICT,
            "the VM has no display: start it with --gpu",
        );
    };
    match take(display) {
        Ok(png) if png.starts_with(&PNG_SIGNATURE) => Reply::Png(png),
        Ok(_) => {
            log::error!("api: display {display} gave something that is not a PNG");
            Reply::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("display {display} did not give a PNG image"),
            )
        }
        Err(ScreenshotError::NoSuchDisplay(message)) => {
            Reply::error(StatusCode::NOT_FOUND, message)
        }
        Err(ScreenshotError::NothingShown(message)) => Reply::error(StatusCode::CONFLICT, message),
    }
}

fn lifecycle(result: Result<(), ControlError>) -> Reply {
    match result {
        Ok(()) => Reply::NoContent,
        Err(e @ ControlError::Conflict { .. }) => Reply::error(StatusCode::CONFLICT, e.to_string()),
        Err(e) => Reply::error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_endpoints_and_back() {
        for e in Endpoint::ALL {
            assert_eq!(Endpoint::from_path(&e.path()), Some(e));
        }
        for bad in [
            "/",
            "/api/v1",
            "/api/v1/",
            "/api/v1/vm.infox",
            "/api/v2/vm.info",
            "/api/v1/vm.info/",
            "/api/v1//vm.info",
            "api/v1/vm.info",
        ] {
            assert_eq!(Endpoint::from_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn errors_are_json_with_allow_for_405() {
        let r = Reply::Error {
            status: StatusCode::METHOD_NOT_ALLOWED,
            message: "no".into(),
            allow: Some(Method::PUT),
        }
        .into_response();
        assert_eq!(r.status(), 405);
        assert_eq!(r.headers()[ALLOW], "PUT");
        assert_eq!(r.headers()[CONTENT_TYPE], JSON);
        let r = Reply::NoContent.into_response();
        assert_eq!(r.status(), 204);
        assert!(r.headers().get(CONTENT_TYPE).is_none());
        let r = Reply::Png(PNG_SIGNATURE.to_vec()).into_response();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()[CONTENT_TYPE], "image/png");
    }

    #[test]
    fn screenshot_queries() {
        for (query, display) in [
            (None, 0),
            (Some(""), 0),
            (Some("display=0"), 0),
            (Some("display=3"), 3),
            (Some("display=007"), 7),
            (Some("&display=2&"), 2),
            (Some("display=4294967295"), u32::MAX),
        ] {
            assert_eq!(screenshot_display(query), Ok(display), "{query:?}");
        }
        for (query, message) in [
            (
                "display=x",
                "invalid display 'x': expected a display number (0, 1, …)",
            ),
            (
                "display=-1",
                "invalid display '-1': expected a display number (0, 1, …)",
            ),
            (
                "display=+1",
                "invalid display '+1': expected a display number (0, 1, …)",
            ),
            (
                "display=1.0",
                "invalid display '1.0': expected a display number (0, 1, …)",
            ),
            (
                "display=4294967296",
                "invalid display '4294967296': the number is too large",
            ),
            (
                "display=",
                "the query parameter display needs a value: display=0, display=1, …",
            ),
            (
                "display",
                "the query parameter display needs a value: display=0, display=1, …",
            ),
            (
                "display=1&display=2",
                "the query parameter display is given more than once",
            ),
            (
                "scale=2",
                "unknown query parameter 'scale': vm.screenshot takes only display",
            ),
            (
                "display=0&format=jpeg",
                "unknown query parameter 'format': vm.screenshot takes only display",
            ),
            (
                "Display=0",
                "unknown query parameter 'Display': vm.screenshot takes only display",
            ),
        ] {
            assert_eq!(
                screenshot_display(Some(query)),
                Err(message.into()),
                "{query}"
            );
        }
    }

    #[test]
    fn resize_bodies() {
        let req = |display, width, height| ResizeRequest {
            display,
            width,
            height,
        };
        for (body, expected) in [
            (r#"{"width": 800, "height": 600}"#, req(0, 800, 600)),
            (
                r#" {"height": 600, "display": 2, "width": 800} "#,
                req(2, 800, 600),
            ),
            (
                r#"{"display": 0, "width": 32, "height": 8192}"#,
                req(0, 32, 8192),
            ),
            (
                r#"{"display": 4294967295, "width": 8192, "height": 32}"#,
                req(u32::MAX, 8192, 32),
            ),
        ] {
            assert_eq!(parse_resize(body.as_bytes()), Ok(expected), "{body}");
        }
        let needs = r#"{"width": W, "height": H} or {"display": N, "width": W, "height": H}"#;
        for (body, message) in [
            ("", format!("vm.resize needs a body: {needs}")),
            (" \n", format!("vm.resize needs a body: {needs}")),
            ("[800, 600]", format!("the body of vm.resize must be a JSON object: {needs}")),
            ("\"800x600\"", format!("the body of vm.resize must be a JSON object: {needs}")),
            ("null", format!("the body of vm.resize must be a JSON object: {needs}")),
            (
                "{}",
                "missing field 'width': vm.resize needs width and height, each within 32..=8192 pixels".into(),
            ),
            (
                r#"{"width": 800}"#,
                "missing field 'height': vm.resize needs width and height, each within 32..=8192 pixels".into(),
            ),
            (
                r#"{"width": -800, "height": 600}"#,
                "invalid width -800: each side must be within 32..=8192 pixels".into(),
            ),
            (
                r#"{"width": 800, "height": 0}"#,
                "invalid height 0: each side must be within 32..=8192 pixels".into(),
            ),
            (
                r#"{"width": 31, "height": 600}"#,
                "invalid width 31: each side must be within 32..=8192 pixels".into(),
            ),
            (
                r#"{"width": 8193, "height": 600}"#,
                "invalid width 8193: each side must be within 32..=8192 pixels".into(),
            ),
            (
                r#"{"width": 4294967296, "height": 600}"#,
                "invalid width 4294967296: each side must be within 32..=8192 pixels".into(),
            ),
            (
                r#"{"width": 18446744073709551615, "height": 600}"#,
                "invalid width 18446744073709551615: each side must be within 32..=8192 pixels".into(),
            ),
            (
                r#"{"width": -9223372036854775808, "height": 600}"#,
                "invalid width -9223372036854775808: each side must be within 32..=8192 pixels".into(),
            ),
            (
                r#"{"width": 1e30, "height": 600}"#,
                "invalid width 1e+30: expected a whole number of pixels within 32..=8192".into(),
            ),
            (
                r#"{"width": 800.0, "height": 600}"#,
                "invalid width 800.0: expected a whole number of pixels within 32..=8192".into(),
            ),
            (
                r#"{"width": 800, "height": 600.5}"#,
                "invalid height 600.5: expected a whole number of pixels within 32..=8192".into(),
            ),
            (
                r#"{"width": "800", "height": 600}"#,
                r#"invalid width "800": expected a whole number of pixels within 32..=8192"#.into(),
            ),
            (
                r#"{"width": null, "height": 600}"#,
                "invalid width null: expected a whole number of pixels within 32..=8192".into(),
            ),
            (
                r#"{"width": [800], "height": 600}"#,
                "invalid width [800]: expected a whole number of pixels within 32..=8192".into(),
            ),
            (
                r#"{"width": true, "height": 600}"#,
                "invalid width true: expected a whole number of pixels within 32..=8192".into(),
            ),
            (
                r#"{"display": -1, "width": 800, "height": 600}"#,
                "invalid display -1: expected a display number (0, 1, …)".into(),
            ),
            (
                r#"{"display": 1.5, "width": 800, "height": 600}"#,
                "invalid display 1.5: expected a display number (0, 1, …)".into(),
            ),
            (
                r#"{"display": "0", "width": 800, "height": 600}"#,
                r#"invalid display "0": expected a display number (0, 1, …)"#.into(),
            ),
            (
                r#"{"display": 4294967296, "width": 800, "height": 600}"#,
                "invalid display 4294967296: the number is too large".into(),
            ),
            (
                r#"{"width": 800, "height": 600, "depth": 32}"#,
                "unknown field 'depth': vm.resize takes display, width and height".into(),
            ),
            (
                r#"{"Width": 800, "height": 600}"#,
                "unknown field 'Width': vm.resize takes display, width and height".into(),
            ),
            (
                r#"{"width": 800, "height": 600, "width": 10}"#,
                "the field 'width' is given more than once".into(),
            ),
            (
                r#"{"width": 800, "height": 600, "height": 600}"#,
                "the field 'height' is given more than once".into(),
            ),
        ] {
            assert_eq!(parse_resize(body.as_bytes()), Err(message), "{body}");
        }
        // Long values and names are cut short in messages.
        let long = "x".repeat(10_000);
        let message = parse_resize(format!(r#"{{"width": "{long}", "height": 600}}"#).as_bytes())
            .unwrap_err();
        assert!(message.len() < 150, "{message}");
        assert!(message.starts_with(r#"invalid width "xxx"#), "{message}");
        let message = parse_resize(format!(r#"{{"{long}": 1}}"#).as_bytes()).unwrap_err();
        assert!(message.len() < 150, "{message}");
        // Malformed JSON, a trailing value, a number JSON cannot hold, deep nesting.
        for body in [
            "{",
            r#"{"width": 800, "height": 600"#,
            r#"{"width": 800, "height": 600} {}"#,
            r#"{"width": 1e999, "height": 600}"#,
            r#"{"width": 0x320, "height": 600}"#,
            r#"{"width": NaN, "height": 600}"#,
            "\u{feff}{}",
            &format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
        ] {
            let message = parse_resize(body.as_bytes()).unwrap_err();
            assert!(
                message.starts_with("malformed JSON in the request body: "),
                "{}: {message}",
                shorten(body)
            );
        }
        // Invalid UTF-8.
        assert!(parse_resize(b"{\"width\": \xff}")
            .unwrap_err()
            .starts_with("malformed JSON"));
    }

    #[test]
    fn empty_bodies() {
        assert_eq!(check_empty_body(Endpoint::Pause, b""), Ok(()));
        assert_eq!(check_empty_body(Endpoint::Pause, b" {} "), Ok(()));
        assert_eq!(
            check_empty_body(Endpoint::Pause, br#"{"width": 800}"#),
            Err("unknown field 'width': vm.pause takes no fields (send no body or {})".into())
        );
    }
}
