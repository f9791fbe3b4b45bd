//! PearVisor's control plane: a REST API over a Unix socket.
//!
//! Paths follow Cloud Hypervisor's style (`/api/v1/vm.info`, `/api/v1/vm.pause`,
//! …); bodies are JSON (metrics are text, a screenshot is a PNG), errors are
//! `{"error": "message"}`. Actions take no body, except `vm.resize`
//! (`{"display": N, "width": W, "height": H}`). The document
//! `docs/api/openapi.yaml` describes every endpoint and is what the contract
//! tests check the server against.
//!
//! - [`ApiServer`]: the server, on its own thread (`api`) with a
//!   current-thread tokio runtime; lifecycle calls that block (shutdown waits
//!   up to the grace period), screenshots and resizes run on tokio's
//!   blocking pool.
//! - [`Endpoint`]: the endpoints, their paths and methods.
//! - [`metrics`]: the Prometheus text exposition of the counters.
//! - [`client`]: a small blocking HTTP/1.1 client (`pearvisor ctl`).

pub mod client;
pub mod metrics;
mod routes;
mod server;

pub use routes::Endpoint;
pub use server::{ApiError, ApiServer};

/// The smallest width or height `vm.resize` takes.
pub const MIN_DISPLAY_SIDE: u32 = 32;
/// The largest width or height `vm.resize` takes.
pub const MAX_DISPLAY_SIDE: u32 = 8192;

/// Where every endpoint lives.
pub const API_PREFIX: &str = "/api/v1";

/// The server's version, as `vmm.ping` reports it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The host's GPU inventory as JSON (`GET /api/v1/vmm.gpus`); an `Err` is
/// answered with 500 and its message.
pub type GpuInventory = std::sync::Arc<dyn Fn() -> Result<serde_json::Value, String> + Send + Sync>;

/// The guest's scanout `N` as a PNG (`GET /api/v1/vm.screenshot?display=N`).
/// Called on tokio's blocking pool; the bytes must be a whole PNG file
/// (anything without the PNG signature is answered with 500, as is a panic).
pub type Screenshots =
    std::sync::Arc<dyn Fn(u32) -> Result<Vec<u8>, ScreenshotError> + Send + Sync>;

/// Why the display side has no picture to give; the message is the
/// display's, passed on to the client as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScreenshotError {
    /// No such scanout, e.g. "display 1 does not exist (the VM has 1)": 404.
    #[error("{0}")]
    NoSuchDisplay(String),
    /// The scanout exists but shows nothing yet, e.g. "display 0 shows
    /// nothing yet": 409.
    #[error("{0}")]
    NothingShown(String),
}

/// Asks the guest to switch scanout `display` to `width` x `height`
/// (`PUT /api/v1/vm.resize`); `Ok` once the request is passed to the guest,
/// which switches when its driver gets to it. Called on tokio's blocking
/// pool, only while the VM is Running and with each side already within
/// [`MIN_DISPLAY_SIDE`]..=[`MAX_DISPLAY_SIDE`] (a panic is answered with 500).
pub type Resizes = std::sync::Arc<dyn Fn(u32, u32, u32) -> Result<(), ResizeError> + Send + Sync>;

/// Why the display side did not pass a size on to the guest; the message is
/// the display's, passed on to the client as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResizeError {
    /// No such scanout, e.g. "display 1 does not exist (the VM has 1)": 404.
    #[error("{0}")]
    NoSuchDisplay(String),
    /// The display does not take this size: 400.
    #[error("{0}")]
    BadSize(String),
    /// Nothing can ask the guest now, e.g. no GPU connected between the
    /// machines of a reboot: 409.
    #[error("{0}")]
    Unavailable(String),
    /// The GPU refused the request: 500.
    #[error("{0}")]
    Failed(String),
}

/// The first eight bytes of every PNG file.
pub const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];
