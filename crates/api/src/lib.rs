//! PearVisor's control plane: a REST API over a Unix socket.
//!
//! Paths follow Cloud Hypervisor's style (`/api/v1/vm.info`, `/api/v1/vm.pause`,
//! …); bodies are JSON, errors are `{"error": "message"}`. The document
//! `docs/api/openapi.yaml` describes every endpoint and is what the contract
//! tests check the server against.
//!
//! - [`ApiServer`]: the server, on its own thread (`api`) with a
//!   current-thread tokio runtime; lifecycle calls that block (shutdown waits
//!   up to the grace period) run on tokio's blocking pool.
//! - [`Endpoint`]: the endpoints, their paths and methods.
//! - [`metrics`]: the Prometheus text exposition of the counters.
//! - [`client`]: a small blocking HTTP/1.1 client (`pearvisor ctl`).

pub mod client;
pub mod metrics;
mod routes;
mod server;

pub use routes::Endpoint;
pub use server::{ApiError, ApiServer};

/// Where every endpoint lives.
pub const API_PREFIX: &str = "/api/v1";

/// The server's version, as `vmm.ping` reports it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The host's GPU inventory as JSON (`GET /api/v1/vmm.gpus`); an `Err` is
/// answered with 500 and its message.
pub type GpuInventory = std::sync::Arc<dyn Fn() -> Result<serde_json::Value, String> + Send + Sync>;
