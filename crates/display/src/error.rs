//! The errors the display side reports to its callers (the API's
//! screenshot, the binary starting a viewer).

use std::net::SocketAddr;

/// Errors from the headless store, PNG encoding and the web viewer.
#[derive(Debug, thiserror::Error)]
pub enum DisplayError {
    #[error("display {index} does not exist (the VM has {count})")]
    NoSuchDisplay { index: u32, count: u32 },
    #[error("display {0} shows nothing yet")]
    NothingShown(u32),
    #[error("cannot encode PNG")]
    Png(#[source] png::EncodingError),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the web viewer's runtime")]
    Runtime(#[source] std::io::Error),
    #[error("cannot start the display-web thread")]
    Thread(#[source] std::io::Error),
}
