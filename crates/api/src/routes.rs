//! Routing and handlers: a request becomes a JSON (or text, or PNG) answer.
//!
//! Unknown paths are 404, a known path with the wrong method 405 (with an
//! `Allow` header), a PUT body other than nothing or `{}` 400 (413 when it
//! is too large), a bad query of `vm.screenshot` 400, an illegal lifecycle
//! transition 409 and any other failure 500. Controller and display calls
//! run on tokio's blocking pool: `vm.shutdown` waits up to the grace period,
//! the others may wait for the controller's lock or the display. Other
//! endpoints ignore the query string.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use pv_vmm::control::{ControlError, VmController};
use serde_json::{json, Value};

use crate::{
    metrics, GpuInventory, ScreenshotError, Screenshots, API_PREFIX, PNG_SIGNATURE, VERSION,
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
}

impl Endpoint {
    /// Every endpoint, in the order of the API reference.
    pub const ALL: [Endpoint; 11] = [
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
            | Endpoint::Shutdown => Method::PUT,
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

/// What an endpoint was asked, beyond its path: only `vm.screenshot` takes
/// a parameter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Params {
    /// The scanout of `vm.screenshot` (`display=N`, default 0).
    display: u32,
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
        if let Err(reply) = check_empty_body(endpoint, req.into_body()).await {
            return reply;
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

/// Actions take no parameters: the body must be empty or `{}`.
async fn check_empty_body(endpoint: Endpoint, body: Incoming) -> Result<(), Reply> {
    let bytes =
        match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY).collect()).await {
            Err(_) => {
                return Err(Reply::error(
                    StatusCode::BAD_REQUEST,
                    "timed out reading the request body",
                ))
            }
            Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
                return Err(Reply::error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the request body is larger than {} KiB", MAX_BODY / 1024),
                ))
            }
            Ok(Err(_)) => {
                return Err(Reply::error(
                    StatusCode::BAD_REQUEST,
                    "cannot read the request body",
                ))
            }
            Ok(Ok(collected)) => collected.to_bytes(),
        };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
        Reply::error(
            StatusCode::BAD_REQUEST,
            format!("malformed JSON in the request body: {e}"),
        )
    })?;
    match value {
        Value::Object(map) => match map.keys().next() {
            None => Ok(()),
            Some(field) => Err(Reply::error(
                StatusCode::BAD_REQUEST,
                format!(
                    "unknown field '{field}': {} takes no fields (send no body or {{}})",
                    endpoint.name()
                ),
            )),
        },
        _ => Err(Reply::error(
            StatusCode::BAD_REQUEST,
            format!(
                "the body of {} must be empty or a JSON object ({{}})",
                endpoint.name()
            ),
        )),
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
}
