//! The errors the display side reports to its callers (the API's
//! screenshot, the binary starting a viewer or the windows).

use std::net::SocketAddr;

/// Errors from the headless store, PNG encoding, the web viewer and the
/// window.
#[derive(Debug, thiserror::Error)]
pub enum DisplayError {
    #[error("display {index} does not exist (the VM has {count})")]
    NoSuchDisplay { index: u32, count: u32 },
    #[error("display {0} shows nothing yet")]
    NothingShown(u32),
    #[error("cannot resize display {0}: no GPU is connected to ask the guest")]
    NoResizer(u32),
    #[error("cannot resize display {scanout} to {width}x{height}: sizes go from {min} to {max} on a side")]
    BadSize {
        scanout: u32,
        width: u32,
        height: u32,
        min: u32,
        max: u32,
    },
    #[error("the GPU refused to resize display {scanout}: {reason}")]
    ResizeRefused { scanout: u32, reason: String },
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
    #[error(
        "--display window needs a display server (DISPLAY or WAYLAND_DISPLAY is unset); use --display web or headless"
    )]
    NoDisplayServer,
    #[error("cannot open windows on the display server")]
    WindowSystem(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("cannot start the display-window thread")]
    WindowThread(#[source] std::io::Error),
}
